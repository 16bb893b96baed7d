"""kombu's filesystem transport (the embedded broker of `make run`), with messages that appear whole.

kombu's own `_put` opens the message file under its final name, then writes
it; its `_get` lists the folder, moves a file away, reads it and deletes it,
without the writer's lock. A reader that comes between the open and the
write reads nothing: the worker died with "Unrecoverable error:
JSONDecodeError", and the writer's bytes went to a file already deleted (a
message lost). Seen with `make run` and `make demo` once the worker polled
the folder often. Here a message is written under a name no reader looks for
and renamed into place, which is atomic: a reader sees the whole message or
nothing.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from time import monotonic
from typing import Any

import kombu.transport
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    """Puts each message whole: written under a temporary name, then renamed into the queue."""

    # kombu's own signature, which its stubs already mark as overriding AbstractChannel's incompatibly.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]  # noqa: ARG002
        folder = Path(self.data_folder_out)
        # kombu's own name: its readers take `<anything>.<queue>.msg`, oldest first by name.
        final = folder / f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        # No reader takes `partial-<id>.tmp`: what follows its first dot is not `<queue>.msg`.
        partial = folder / f"partial-{uuid.uuid4().hex}.tmp"
        try:
            partial.write_bytes(str_to_bytes(dumps(payload)))
            partial.rename(final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise ChannelError(f"Cannot add a message for {queue!r} to {folder}") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with `Channel` above."""

    Channel = Channel


def use_whole_message_filesystem_transport() -> None:
    """Make `filesystem://` URLs use this module's Transport in this process (kombu resolves by scheme)."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
    # kombu caches the class it resolved for a name: a connection made earlier would keep its own.
    vars(kombu.transport)["_transport_cache"].pop("filesystem", None)
