"""`panic-metrics`: the operator's commands beside `celery worker` and `celery beat`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

# First: it points prometheus_client at the multiprocess directory before anything imports it.
import app.metrics  # noqa: F401


def _migrate(_: argparse.Namespace) -> int:
    from alembic import command
    from alembic.config import Config

    root = Path(__file__).resolve().parent.parent
    command.upgrade(Config(str(root / "alembic.ini")), "head")
    return 0


def _serve_metrics(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.http.server import serve_forever
    from app.logs import configure_logging

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
    from app.dead_letters import replay_dead_letters
    from app.replay import broker_publisher

    directory = args.directory or get_settings().dead_letter_dir
    if not directory.is_dir():
        print(f"no dead letters in {directory}")
        return 0
    with broker_publisher() as publish:
        sent = replay_dead_letters(directory, publish)
    print(f"published {sent} dead-lettered events to the broker")
    return 0


def _selection(args: argparse.Namespace) -> Any:
    from app.rejected import Selection, parse_id

    return Selection(ids=[parse_id(i) for i in args.id or ()], reason=args.reason, kind=args.kind)


def _rejected_list(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.rejected import list_rejected

    with session_scope() as session:
        for row in list_rejected(session, _selection(args), limit=args.limit):
            print(
                f"{row.message_id}:{row.position}\t{row.rejected_at.isoformat()}\t{row.kind}\t{row.reason}"
                f"\t{row.detail}\t{row.payload}"
            )
    return 0


def _rejected_replay(args: argparse.Namespace) -> int:
    from app.db.session import session_scope
    from app.rejected import replay_rejected
    from app.replay import broker_publisher

    selection = _selection(args)
    if not (selection.ids or selection.reason or selection.kind or args.all):
        print("choose what to replay: --id, --reason, --kind, or --all", file=sys.stderr)
        return 2
    with broker_publisher() as publish:
        sent = replay_rejected(session_scope, publish, selection)
    print(f"published {sent} rejected payloads to the broker as events")
    return 0


def _rerun_window(args: argparse.Namespace) -> int:
    from app.config import get_settings
    from app.replay import publishing_app
    from app.windows import window_start
    from panic_metrics_client.messages import SCHEDULED_QUEUE

    try:
        moment = datetime.fromisoformat(args.start)
    except ValueError:
        print(f"--start {args.start!r}: not an ISO 8601 time, e.g. 2026-11-24T12:00:00Z", file=sys.stderr)
        return 2
    settings = get_settings()
    start = window_start(moment, settings.performance_window_seconds)  # a naive time is UTC
    end = start + timedelta(seconds=settings.performance_window_seconds)
    task = f"aggregate_{args.job}_performance"
    celery = publishing_app(settings)
    try:
        result = celery.send_task(
            f"panic_metrics.scheduled.{task}",
            kwargs={"window_start": start.isoformat()},
            queue=SCHEDULED_QUEUE,
            routing_key=SCHEDULED_QUEUE,
            retry=True,
        )
    finally:
        celery.close()
    print(f"queued {task} for the window {start.isoformat()} to {end.isoformat()} (task {result.id})")
    print("a worker consuming `scheduled` replaces that window's snapshots (and the gauges if it is the newest)")
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

    replay = commands.add_parser(
        "replay-dead-letters", help="publish events set aside while the database was down back to the broker"
    )
    replay.add_argument("--directory", type=Path, default=None, help="default: DEAD_LETTER_DIR")
    replay.set_defaults(run=_replay_dead_letters)

    rerun = commands.add_parser(
        "rerun-window", help="aggregate one performance window again (after late events), on a worker"
    )
    rerun.add_argument("--job", required=True, choices=("zone", "firm"), help="zone or firm performance")
    rerun.add_argument(
        "--start", required=True, help="ISO 8601, e.g. 2026-11-24T12:00:00Z (UTC if naive); aligned down to its window"
    )
    rerun.set_defaults(run=_rerun_window)

    rejected = commands.add_parser("rejected", help="payloads that failed validation, kept with their reason")
    rejected_commands = rejected.add_subparsers(required=True)
    for name, run, help_text in (
        ("list", _rejected_list, "print rejected payloads, newest first (id, time, kind, reason, detail, payload)"),
        ("replay", _rejected_replay, "publish rejected payloads again as events (after a fix); their rows go"),
    ):
        command = rejected_commands.add_parser(name, help=help_text)
        command.add_argument("--id", action="append", help="message:position as listed (repeatable)")
        command.add_argument("--reason", help="only this reason, e.g. extra_forbidden")
        command.add_argument("--kind", help="only this kind, e.g. auth")
        if name == "list":
            command.add_argument("--limit", type=int, default=100)
        else:
            command.add_argument("--all", action="store_true", help="every rejected payload")
        command.set_defaults(run=run)

    args = parser.parse_args(argv)
    try:
        result: int = args.run(args)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
