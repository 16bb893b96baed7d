"""Consuming from Redis: our claiming transport against kombu's own (BRPOP), same server, same messages.

Fills a queue with N messages of a realistic size (a Celery task message
carrying 10 events), then consumes and acknowledges them all with one
transport, then the other, alternating for several rounds. Prints
messages/s for each and the ratio ours/kombu's. Goal: ≥ 1x (the claim
records the message in the same round trip that takes it; kombu needs two).

    .venv/bin/python bench/transport.py [--messages 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kombu import Connection, Consumer, Producer, Queue

from tests.support.services import RedisServer

OURS = "app.redis_transport:RedisTransport"
KOMBUS = "kombu.transport.redis:Transport"
BODY = {
    "events": [
        {
            "kind": "panic_request",
            "event_id": str(uuid.uuid4()),
            "service_type": "security",
            "status": "requested",
            "zone": "zone-17",
            "response_time_seconds": 12.345678901234567,
        }
        for _ in range(10)
    ]
}


def fill(url: str, queue: str, messages: int) -> None:
    with Connection(url, transport=KOMBUS) as connection:
        producer = Producer(connection.default_channel)
        declare = [Queue(queue)]
        for _ in range(messages):
            producer.publish(BODY, routing_key=queue, serializer="json", declare=declare)


def consume(url: str, transport: str, queue: str, messages: int) -> float:
    """Seconds to take and acknowledge every message, one at a time, as a worker's consumer does."""
    seen = 0

    def ack(_body: object, message: object) -> None:
        nonlocal seen
        seen += 1
        message.ack()  # type: ignore[attr-defined]

    with Connection(url, transport=transport) as connection:
        consumer = Consumer(connection.default_channel, [Queue(queue)], callbacks=[ack], prefetch_count=1)
        with consumer:
            started = time.perf_counter()
            while seen < messages:
                connection.drain_events(timeout=30)
            return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    server = RedisServer(Path(tempfile.mkdtemp(prefix="panic-metrics-bench-")) / "redis")
    server.start()
    rates: dict[str, list[float]] = {KOMBUS: [], OURS: []}
    try:
        for round_ in range(args.rounds):
            for transport in (KOMBUS, OURS) if round_ % 2 == 0 else (OURS, KOMBUS):
                queue = f"bench-{uuid.uuid4().hex}"
                fill(server.url, queue, args.messages)
                seconds = consume(server.url, transport, queue, args.messages)
                rates[transport].append(args.messages / seconds)
                print(f"round {round_ + 1} {transport.split(':')[0]:>25}: {args.messages / seconds:8.0f} messages/s")
    finally:
        server.stop()
    kombus, ours = statistics.median(rates[KOMBUS]), statistics.median(rates[OURS])
    print(f"median kombu (BRPOP, then record): {kombus:8.0f} messages/s")
    print(f"median ours (claim: record + pop): {ours:8.0f} messages/s")
    print(f"ratio ours / kombu: {ours / kombus:.2f}x (goal >= 1x)")


if __name__ == "__main__":
    main()
