"""kombu's filesystem transport (the embedded broker of `make run`): messages appear whole, are read from one listing.

kombu's own `_put` opens the message file under its final name, then writes
it; its `_get` lists the folder, moves a file away, reads it and deletes it,
without the writer's lock. A reader that comes between the open and the
write reads nothing: the worker died with "Unrecoverable error:
JSONDecodeError", and the writer's bytes went to a file already deleted (a
message lost). Seen with `make run` and `make demo` once the worker polled
the folder often. Here a message is written under a name no reader looks for
and renamed into place, which is atomic: a reader sees the whole message or
nothing.

kombu's `_get` also lists and sorts the whole folder for every message it
takes, and again for every queue it finds empty: a worker asks its events,
scheduled and probe queues in turn, and its control queue, so a backlog of
a thousand messages cost about four listings of a thousand names per
message, most of the worker's main process (issue 19). Here a connection
lists the folder once for all its channels and queues and takes each
queue's messages from that listing, oldest first; it lists again only for a
queue with nothing left, and then only once the listing is a polling
interval old. A poll may so answer from a listing up to one polling
interval old, no staler than the folder a consumer sees between its polls.
A message is taken by reading it and then deleting it: only one consumer's
delete succeeds, and only that one delivers it; a name another consumer
took meanwhile is skipped.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections import deque
from pathlib import Path
from queue import Empty
from time import monotonic
from typing import Any, cast

import kombu.transport
from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads
from kombu.utils.scheduling import FairCycle

MESSAGE_SUFFIX = ".msg"


class QoS(virtual.QoS):
    """kombu's prefetch window, which tells the transport when an acknowledgement frees a place in it."""

    def ack(self, delivery_tag: str) -> None:
        """Acknowledge the message (any thread: the pool's result handler does); a poll may take the next."""
        super().ack(delivery_tag)
        cast("Transport", self.channel.connection).window_moved.set()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        """Reject (and maybe requeue) the message; its place is free."""
        super().reject(delivery_tag, requeue=requeue)
        cast("Transport", self.channel.connection).window_moved.set()


class Channel(filesystem.Channel):
    """Puts each message whole (written aside, then renamed in); gets them from one listing of the folder."""

    QoS = QoS

    # kombu's own signature, which its stubs already mark as overriding AbstractChannel's incompatibly.
    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:  # type: ignore[override]  # noqa: ARG002
        folder = Path(self.data_folder_out)
        # kombu's own name: its readers take `<anything>.<queue>.msg`, oldest first by name.
        final = folder / f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}{MESSAGE_SUFFIX}"
        # No reader takes `partial-<id>.tmp`: what follows its first dot is not `<queue>.msg`.
        partial = folder / f"partial-{uuid.uuid4().hex}.tmp"
        try:
            partial.write_bytes(str_to_bytes(dumps(payload)))
            partial.rename(final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise ChannelError(f"Cannot add a message for {queue!r} to {folder}") from exc

    # kombu's own signature, which its stubs already mark as overriding AbstractChannel's incompatibly.
    def _get(self, queue: str) -> dict[str, Any]:  # type: ignore[override]
        """The oldest message of `queue` in the folder's last listing that is still there; `Empty` if none."""
        if self.store_processed:  # kombu moves each message to the processed folder: its own way
            return super()._get(queue)
        transport = cast("Transport", self.connection)
        names = transport.listing.names(queue, folder=self.data_folder_in, max_age=transport.polling_interval or 0.0)
        folder = Path(self.data_folder_in)
        while names:
            path = folder / names.popleft()
            try:
                payload = path.read_bytes()
                path.unlink()  # the claim: only one consumer's unlink succeeds
            except FileNotFoundError:
                continue  # another consumer took it
            except OSError as exc:
                raise ChannelError(f"Cannot take {path!r} from the queue") from exc
            message: dict[str, Any] = loads(bytes_to_str(payload))
            return message
        raise Empty


class Listing:
    """A broker folder's message names by queue, oldest first, as last listed; a connection's channels share it."""

    def __init__(self) -> None:
        #: queue -> names of its messages in the last listing not taken yet, oldest first.
        self._names: dict[str, deque[str]] = {}
        self._listed_at = float("-inf")

    def names(self, queue: str, *, folder: str, max_age: float) -> deque[str]:
        """`queue`'s names not taken yet; listed anew if none are left and the listing is `max_age` seconds old."""
        names = self._names.get(queue)
        if not names and monotonic() - self._listed_at >= max_age:
            self._list(folder)
            names = self._names.get(queue)
        return names if names is not None else deque()

    def _list(self, folder: str) -> None:
        self._listed_at = monotonic()
        listed: dict[str, deque[str]] = {}
        # Names, not Paths: a Path for every file of a backlog would cost much of what one listing saves.
        for name in sorted(os.listdir(folder)):  # noqa: PTH208
            # `<ms>_<uuid>.<queue>.msg`: the queue is what follows the first dot (it may hold dots itself).
            rest = name.partition(".")[2]
            if rest.endswith(MESSAGE_SUFFIX):
                listed.setdefault(rest[: -len(MESSAGE_SUFFIX)], deque()).append(name)
        self._names = listed


class Transport(filesystem.Transport):
    """kombu's filesystem transport with `Channel` above; its channels (a worker's tasks and its control) list once."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listing = Listing()
        #: Set when a channel's prefetch window frees a place: the wait between two polls ends then.
        self.window_moved = threading.Event()

    # kombu's own signature, which its stubs already mark as overriding the base Transport's incompatibly.
    def drain_events(self, connection: Any, timeout: float | None = None) -> None:  # type: ignore[override]  # noqa: ARG002
        """Deliver one message; between unsuccessful polls wait the polling interval or until an ack frees a place.

        kombu's own loop sleeps the whole interval after any unsuccessful
        poll, also when the poll took nothing because the prefetch window was
        full: with acks_late the children then finished the window's messages
        and waited, idle, for the rest of the interval (the worker's main
        thread slept 79% of the time with a backlog queued, issue 19).
        """
        started = monotonic()
        cycle = cast("FairCycle", self.cycle)  # made in kombu's __init__
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            self.window_moved.clear()  # before the poll: an ack during it ends the wait at once
            try:
                cycle.get(self._deliver, timeout=timeout)
            except Empty:
                if timeout is not None and monotonic() - started >= timeout:
                    raise TimeoutError from None
                if interval is not None:
                    self.window_moved.wait(interval)
            else:
                return


def use_whole_message_filesystem_transport() -> None:
    """Make `filesystem://` URLs use this module's Transport in this process (kombu resolves by scheme)."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
    # kombu caches the class it resolved for a name: a connection made earlier would keep its own.
    vars(kombu.transport)["_transport_cache"].pop("filesystem", None)
