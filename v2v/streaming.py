"""Running blocking work in a thread while its events stream out (for server-streaming RPCs)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

R = TypeVar("R")

_DONE = object()


def stream_events(work: Callable[[Callable[[Any], None]], R]) -> Iterator[Any]:
    """Calls `work(sink)` in a thread and yields everything it puts into `sink`, then its return
    value. An exception raised by `work` is raised here, after the events that preceded it."""
    q: queue.Queue[Any] = queue.Queue()
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work(q.put))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the consumer)
            outcome.append(exc)
        q.put(_DONE)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while (item := q.get()) is not _DONE:
        yield item
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    yield outcome[0]
