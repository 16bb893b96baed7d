"""The embedded broker: consumers polling while messages are written read each one whole, and once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty
from typing import Any

from kombu import Connection, Queue

from panic_metrics_client.messages import EVENTS_QUEUE
from panic_metrics_client.transport import filesystem_options

MESSAGES = 3_000
# The worker's polling interval is 20 ms (app.broker); a poll may answer from a listing that old.
POLLING_SECONDS = 0.02

# A publisher as the client has it (its own process, as a web app is): one message after another.
PUBLISHER = """
import sys
from pathlib import Path
from panic_metrics_client import ClientSettings
from panic_metrics_client.messages import event_json, event_message
from panic_metrics_client.parsing import parse_event
from panic_metrics_client.transport import Publisher
publisher = Publisher(ClientSettings(broker_url="filesystem://", broker_folder=Path(sys.argv[1])))
event = {"service_type": "fire", "status": "requested", "zone": "harbour"}
for _ in range(int(sys.argv[2])):
    publisher.publish(event_message(event_json(parse_event("panic_request", event))))
"""


def drain(channels: list[Any], publisher: subprocess.Popen[bytes], expected: int) -> list[str]:
    """Poll the channels in turn, as often as they can, until `expected` messages came or the publisher is long gone."""
    received: list[str] = []
    deadline = None
    while len(received) < expected:
        for channel in channels:
            try:
                payload = channel._get(EVENTS_QUEUE)  # what the worker's consumer does
            except Empty:
                continue
            received.append(payload["headers"]["id"])
        if deadline is None and publisher.poll() is not None:
            deadline = time.monotonic() + 10  # a poll answers from a listing one polling interval old at most
        if deadline is not None and time.monotonic() > deadline:
            break
    return received


def test_a_consumer_polling_while_messages_are_written_reads_each_whole_and_once(tmp_path: Path) -> None:
    """kombu's own writer opened the file under its name before writing it: a reader in between read nothing."""
    folder = tmp_path / "broker"
    options = {**filesystem_options(folder), "polling_interval": POLLING_SECONDS}
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(folder), str(MESSAGES)])
    with Connection("filesystem://", transport_options=options) as connection:
        received = drain([connection.default_channel], publisher, MESSAGES)
    assert publisher.wait(timeout=60) == 0
    assert len(received) == len(set(received)) == MESSAGES
    assert not list((folder / "queue").iterdir())  # nothing left half-written


def test_two_consumers_of_one_folder_take_each_message_once(tmp_path: Path) -> None:
    """Each lists the folder on its own and works through its listing: a message the other took is skipped."""
    folder = tmp_path / "broker"
    options = {**filesystem_options(folder), "polling_interval": POLLING_SECONDS}
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(folder), str(MESSAGES)])
    with (
        Connection("filesystem://", transport_options=options) as first,
        Connection("filesystem://", transport_options=options) as second,
    ):
        received = drain([first.default_channel, second.default_channel], publisher, MESSAGES)
    assert publisher.wait(timeout=60) == 0
    assert len(received) == len(set(received)) == MESSAGES
    assert not list((folder / "queue").iterdir())


def test_a_full_prefetch_window_takes_the_next_message_once_one_is_acknowledged(tmp_path: Path) -> None:
    """Not a polling interval later: kombu slept it out, and the worker's children idled (acks_late)."""
    polling_seconds = 5.0
    options = {**filesystem_options(tmp_path / "broker"), "polling_interval": polling_seconds}
    with Connection("filesystem://", transport_options=options) as connection:
        producer = connection.Producer()
        for number in range(2):
            producer.publish({"number": number}, exchange="", routing_key=EVENTS_QUEUE)
        received: list[Any] = []
        consumer = connection.Consumer(
            Queue(EVENTS_QUEUE), callbacks=[lambda _body, message: received.append(message)], accept=["json"]
        )
        consumer.qos(prefetch_count=1)
        with consumer:
            connection.drain_events(timeout=10)
            threading.Timer(0.2, received[0].ack).start()  # as the pool's result handler acknowledges
            started = time.monotonic()
            connection.drain_events(timeout=10)
            waited = time.monotonic() - started
    # Both, in either order: kombu names a message by its millisecond, and these two may share one.
    assert sorted(message.payload["number"] for message in received) == [0, 1]
    assert waited < polling_seconds / 2
