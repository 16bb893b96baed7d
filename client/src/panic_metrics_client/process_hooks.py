"""Signal and fork handling: every client of the process is closed at exit and on SIGTERM, reset in a child."""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol


class ProcessBound(Protocol):
    """What the hooks call on a client."""

    def close(self, timeout: float | None = None) -> None: ...

    def after_fork_in_child(self) -> None: ...

    def before_fork(self) -> None: ...

    def after_fork_in_parent(self) -> None: ...


_CLIENTS: weakref.WeakSet[Any] = weakref.WeakSet()


def track(client: ProcessBound) -> None:
    """Close `client` at exit and reset it in a forked child (a pre-forking web server forks after import)."""
    _CLIENTS.add(client)


class SigtermChain:
    """On SIGTERM, close first, then what was there before: the previous handler, or the default death."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._previous: Any = None

    def install(self) -> None:
        """Install from the main thread only, once; a web server that sets its own later exits normally,
        and the exit hook flushes instead."""
        if threading.current_thread() is not threading.main_thread() or self._previous is not None:
            return
        try:
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main interpreter
            self._previous = None

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._close()
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


def _before_fork() -> None:
    for client in list(_CLIENTS):
        client.before_fork()


def _after_fork_in_parent() -> None:
    for client in list(_CLIENTS):
        client.after_fork_in_parent()


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client.after_fork_in_child()


def _close_all() -> None:
    for client in list(_CLIENTS):
        client.close()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork)
atexit.register(_close_all)
