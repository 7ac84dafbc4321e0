"""Single-flight: concurrent callers asking for the same key share one computation."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from idcfs.errors import FetchError

V = TypeVar("V")


class SingleFlight(Generic[V]):
    """Runs at most one computation per key at a time; others wait for its result."""

    def __init__(self, wait_timeout: float = 900.0) -> None:
        self.wait_timeout = wait_timeout
        self._running: dict[Hashable, Future[V]] = {}
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> tuple[Future[V], bool]:
        """The key's future and whether the caller owns it (must resolve it and `finish`)."""
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running, False
            future: Future[V] = Future()
            self._running[key] = future
            return future, True

    def running(self, key: Hashable) -> Future[V] | None:
        """The key's future while someone computes it, else None."""
        return self._running.get(key)

    def finish(self, key: Hashable) -> None:
        with self._lock:
            self._running.pop(key, None)

    def run(self, key: Hashable, compute: Callable[[], V]) -> V:
        """compute() once for concurrent callers of the same key; exceptions are shared."""
        future, owner = self.claim(key)
        if not owner:
            return wait(future, self.wait_timeout)
        try:
            future.set_result(compute())
        except BaseException as error:
            future.set_exception(error)
        finally:
            self.finish(key)
        return future.result()


def wait(future: Future[V], timeout: float) -> V:
    """A future's result, bounded in time (FetchError when it takes too long)."""
    try:
        return future.result(timeout=timeout)
    except FutureTimeout as error:
        raise FetchError(f"gave up waiting {timeout:.0f} s for a shared fetch") from error
