"""`panic-metrics`: the operator's commands beside `celery worker` and `celery beat`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _migrate(_: argparse.Namespace) -> int:
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    command.upgrade(Config(str(root / "alembic.ini")), "head")
    return 0


def _serve_metrics(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.logs import configure_logging
    from app.metrics.endpoint import serve_forever

    settings = get_settings()
    configure_logging(settings.log_level)
    serve_forever(args.host or settings.metrics_host, args.port or settings.metrics_port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    sent = run_demo(rate=args.rate, duration=args.duration, seed=args.seed)
    print(f"demo: sent {sent} events")
    return 0


def _replay_dead_letters(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.dead_letters import read_dead_letters
    from app.ingest import ingest

    directory = args.directory or get_settings().dead_letter_dir
    for path, records in read_dead_letters(directory):
        for record in records:
            ingest([record["payload"]], kind=record["kind"])
        path.unlink()
        print(f"replayed {len(records)} events from {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `panic-metrics` command."""
    parser = argparse.ArgumentParser(prog="panic-metrics", description=__doc__)
    commands = parser.add_subparsers(required=True)

    migrate = commands.add_parser("migrate", help="apply the database migrations (alembic upgrade head)")
    migrate.set_defaults(run=_migrate)

    serve = commands.add_parser("serve-metrics", help="serve /metrics and /health on their own, one per host")
    serve.add_argument("--host", help="default: METRICS_HOST")
    serve.add_argument("--port", type=int, help="default: METRICS_PORT")
    serve.set_defaults(run=_serve_metrics)

    demo = commands.add_parser("demo", help="fire a realistic stream of sample events at the worker")
    demo.add_argument("--rate", type=float, default=20, help="events per second (default 20)")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--seed", type=int, default=None)
    demo.set_defaults(run=_demo)

    replay = commands.add_parser("replay-dead-letters", help="store events set aside while the database was down")
    replay.add_argument("--directory", type=Path, default=None, help="default: DEAD_LETTER_DIR")
    replay.set_defaults(run=_replay_dead_letters)

    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
