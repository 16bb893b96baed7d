"""The embedded broker: a consumer polling while messages are written reads each one whole, and once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from queue import Empty

from kombu import Connection

from panic_metrics_client.messages import EVENTS_QUEUE
from panic_metrics_client.transport import filesystem_options

MESSAGES = 3_000

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


def test_a_consumer_polling_while_messages_are_written_reads_each_whole_and_once(tmp_path: Path) -> None:
    """kombu's own writer opened the file under its name before writing it: a reader in between read nothing."""
    folder = tmp_path / "broker"
    options = filesystem_options(folder)
    publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(folder), str(MESSAGES)])
    received: list[str] = []
    with Connection("filesystem://", transport_options=options) as connection:
        channel = connection.default_channel
        while True:
            try:
                payload = channel._get(EVENTS_QUEUE)  # what the worker's consumer does, as often as it can
            except Empty:
                if publisher.poll() is not None:
                    try:
                        payload = channel._get(EVENTS_QUEUE)
                    except Empty:
                        break
                else:
                    continue
            received.append(payload["headers"]["id"])
    assert publisher.wait(timeout=60) == 0
    assert len(received) == len(set(received)) == MESSAGES
    assert not list((folder / "queue").iterdir())  # nothing left half-written
