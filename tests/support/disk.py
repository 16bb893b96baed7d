"""A small tmpfs a test mounts, fills and frees itself: a full disk on demand, unmounted at the end."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

FILLER = "filler"


class SmallTmpfs:
    """A tmpfs of `size` at `path`; `fill` leaves no byte free, `free` gives the space back."""

    def __init__(self, path: Path, size: str = "1M") -> None:
        self.path = path
        self.size = size

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)], check=True)

    def unmount(self) -> None:
        # Lazy: a process the test left behind may still hold a file open.
        subprocess.run(["umount", "-l", str(self.path)], check=True)

    def fill(self) -> None:
        """Write zeros until the filesystem refuses with ENOSPC."""
        chunk = b"\0" * 4096
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            while True:
                os.write(fd, chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        (self.path / FILLER).unlink(missing_ok=True)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1M") -> Iterator[SmallTmpfs]:
    """Mount a tmpfs at `path` for the block, unmounted after it even when the test fails; root only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = SmallTmpfs(path, size)
    disk.mount()
    try:
        yield disk
    finally:
        disk.unmount()
