"""`python -m monitoring.generator [--check]`."""

from __future__ import annotations

import sys

from monitoring.generator import ROOT, differences, write


def main(argv: list[str]) -> int:
    """Write the generated files, or with --check report those that differ."""
    if "--check" in argv:
        stale = differences()
        for path in stale:
            print(f"out of date: {path.relative_to(ROOT)} (run `make monitoring`)")
        return 1 if stale else 0
    for path in write():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
