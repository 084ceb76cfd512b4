"""Cancelling a run between network calls, not only between steps.

One step of a tiling method is many network calls (MultiDiffusion's windows, Elastic's passes,
DemoFusion's views: minutes on a large canvas), so the sampling loop opens a :func:`cancel_scope`
with the run's event and the adapter asks :func:`check_cancelled` before every network call. The
scope lives in the thread running the loop: runs on other threads, sharing the adapter, have theirs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from .errors import Cancelled

_scope = threading.local()


class _Scope:
    __slots__ = ("event", "where")

    def __init__(self, event: threading.Event, where: str):
        self.event, self.where = event, where


@contextmanager
def cancel_scope(event: threading.Event | None) -> Iterator[_Scope | None]:
    """Network calls in this thread within the block raise :class:`Cancelled` once ``event`` is set;
    the loop sets the scope's ``where`` (e.g. ``"step 3/20"``) for the message. None: no scope."""
    if event is None:
        yield None
        return
    outer = getattr(_scope, "value", None)
    scope = _scope.value = _Scope(event, "")
    try:
        yield scope
    finally:
        _scope.value = outer


def check_cancelled() -> None:
    """Raise :class:`Cancelled` when the run this thread is in was cancelled (called per network call)."""
    scope = getattr(_scope, "value", None)
    if scope is not None and scope.event.is_set():
        raise Cancelled(f"cancelled during {scope.where}" if scope.where else "cancelled")
