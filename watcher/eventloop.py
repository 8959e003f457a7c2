"""The process's one I/O event loop, on a thread of its own.

Every request to an API server, and every watch, runs on this loop: thousands of
watches are thousands of small tasks (a coroutine and a stream each), not threads,
and the watches of a context share its HTTP/2 connection (``watcher.transport``).
Code on other threads (discovery, Leases, the reconcile thread, a sync's relist)
hands coroutines to it with :meth:`IoLoop.run` and waits for the answer; nothing
else ever runs on the loop's thread, so a blocking call there would stall every
watch of the process (credential plugins run in an executor for that reason).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class IoLoop:
    """An asyncio loop running forever on a daemon thread."""

    def __init__(self, name: str = "k8s-watcher io") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    @property
    def on_loop(self) -> bool:
        """True on the loop's own thread (where :meth:`run` would deadlock)."""
        return threading.current_thread() is self._thread

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` as a task on the loop; any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (from any other thread)."""
        if self.on_loop:
            coro.close()
            raise RuntimeError("IoLoop.run called on the loop's own thread: it would wait for itself")
        future = self.spawn(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop soon; any thread."""
        self.loop.call_soon_threadsafe(fn, *args)


_default: IoLoop | None = None
_default_lock = threading.Lock()


def io_loop() -> IoLoop:
    """The process's I/O loop, started on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = IoLoop()
    return _default
