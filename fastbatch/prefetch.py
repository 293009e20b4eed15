"""A background thread that runs a producer ahead of the consumer.

See NOTE [ Staging, streams and shutdown ] in docs/design.md.  In short:

- the thread gets the producer iterator, a bounded queue and a stop event,
  never the :class:`Prefetcher` itself, so dropping the last reference to the
  prefetcher collects it and its ``__del__`` stops the thread;
- every item travels as ``(item, error)``; an error raised in the thread is
  re-raised in the consumer with its original traceback, and a sentinel ends
  the stream, so the consumer never waits on a thread that has gone;
- stopping sets the event, drains the queue (a ``put`` blocked on a full queue
  returns) and joins with a timeout, skipped while the interpreter finalises;
  the thread is a daemon, so interpreter exit never waits for it long;
- at interpreter exit (``atexit``, before finalisation) every live prefetcher
  is stopped and joined, so no producer is inside a compiled kernel while the
  runtime tears down its thread pools (which aborts the process otherwise).
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import weakref
from typing import Any, Callable, Iterator

_END = object()
# How often a blocked producer or consumer looks at the stop event / the
# producer's liveness.  Short enough for a prompt Ctrl-C, long enough to cost
# nothing.
_POLL_S = 0.05
_JOIN_TIMEOUT_S = 5.0


def _run(source: Iterator[Any], out: queue.Queue, stop: threading.Event, on_start: Callable[[], None] | None) -> None:
    try:
        if on_start is not None:
            on_start()
        for item in source:
            if not _put(out, (item, None), stop):
                return
        _put(out, (_END, None), stop)
    except BaseException as error:  # noqa: BLE001 - delivered to the consumer
        _put(out, (None, error), stop)
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()


def _put(out: queue.Queue, entry, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(entry, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


_LIVE: "weakref.WeakSet[Prefetcher]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for prefetcher in list(_LIVE):
        prefetcher.close()


class Prefetcher:
    """Iterate over ``source`` while a daemon thread keeps up to ``depth`` items ready."""

    def __init__(self, source: Iterator[Any], depth: int, *, on_start: Callable[[], None] | None = None) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=_run, args=(source, self._queue, self._stop, on_start), name="fastbatch-prefetch", daemon=True
        )
        self._thread.start()
        _LIVE.add(self)

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        while True:
            try:
                item, error = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if self._done:
                    # Closed from another thread while this one waited.
                    raise StopIteration from None
                if not self._thread.is_alive() and self._queue.empty():
                    self.close()
                    raise RuntimeError("the fastbatch prefetch thread ended without a result") from None
        if error is not None:
            self.close()
            raise error
        if item is _END:
            self.close()
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop the thread and release what it holds; safe to call more than once."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread.is_alive() and self._thread is not threading.current_thread() and not sys.is_finalizing():
            self._thread.join(timeout=_JOIN_TIMEOUT_S)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass
