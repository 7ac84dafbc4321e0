"""Claims: whoever is first to want a key fetches it, everyone else waits for that fetch.

This is single flight with the duty spelled out in a type. `Claims.claim(key)` gives
the key's future and, to the first caller only, a `Claim`. The holder of a `Claim` must
end it exactly once, on every path: `resolve(value)`, `fail(error)`, or `release(reason)`
(which fails it, if it is still open, with a FetchError saying why: read-ahead given up
at unmount, a batch that was never sent). Until then every other caller waits on the
future (bounded: `wait`), and no second fetch of the key starts. A claim ended leaves
the table, so the next caller after a failure claims the key afresh.

Batches of claims (`ClaimBatch`, by frame) travel from the loader through the request
coalescer and read-ahead; `release_all` ends what a batch left open.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from idcfs.errors import FetchError

V = TypeVar("V")

DEFAULT_WAIT_S = 30.0  # the default --timeout: a waiter gives up with the fetch


class Claim(Generic[V]):
    """The duty to produce one key's value; end it once with resolve, fail or release."""

    def __init__(self, owner: Claims[V], key: Hashable, future: Future[V]) -> None:
        self.key = key
        self.future = future
        self._owner = owner

    @property
    def done(self) -> bool:
        return self.future.done()

    def resolve(self, value: V) -> None:
        """Give every waiter `value` and leave the table."""
        self._owner.finish(self.key, self.future)  # first: a woken waiter claims afresh
        if not self.future.done():
            self.future.set_result(value)

    def fail(self, error: BaseException) -> None:
        """Give every waiter `error` (unless the claim already ended) and leave the table."""
        self._owner.finish(self.key, self.future)  # first: a woken waiter claims afresh
        if not self.future.done():
            self.future.set_exception(error)

    def release(self, reason: str) -> None:
        """End the claim if nothing else did: waiters get a FetchError saying `reason`."""
        self.fail(FetchError(reason))


class Claims(Generic[V]):
    """The table of keys being produced; thread-safe."""

    def __init__(self, wait_timeout: float = DEFAULT_WAIT_S) -> None:
        self.wait_timeout = wait_timeout
        self._running: dict[Hashable, Future[V]] = {}
        self._lock = threading.Lock()

    def claim(self, key: Hashable) -> tuple[Future[V], Claim[V] | None]:
        """The key's future, and a Claim when the caller is the first to want it."""
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                return running, None
            future: Future[V] = Future()
            self._running[key] = future
        return future, Claim(self, key, future)

    def running(self, key: Hashable) -> Future[V] | None:
        """The key's future while someone produces it, else None."""
        return self._running.get(key)

    def finish(self, key: Hashable, future: Future[V]) -> None:
        """Take `future` out of the table, if it is still the key's: a claim ended a
        second time must not remove a newer claim of the same key."""
        with self._lock:
            if self._running.get(key) is future:
                del self._running[key]

    def run(self, key: Hashable, compute: Callable[[], V]) -> V:
        """compute() once for concurrent callers of the same key; errors are shared."""
        future, claim = self.claim(key)
        if claim is None:
            return wait(future, self.wait_timeout)
        try:
            claim.resolve(compute())
        except BaseException as error:
            claim.fail(error)
        return future.result()


def release_all(claims: Iterable[Claim[V]], reason: str) -> None:
    """End every claim still open, with a FetchError saying `reason`."""
    for claim in claims:
        claim.release(reason)


def fail_all(claims: Iterable[Claim[V]], error: BaseException) -> None:
    """End every claim still open with `error`."""
    for claim in claims:
        claim.fail(error)


def wait(future: Future[V], timeout: float) -> V:
    """A future's result, bounded in time (FetchError when it takes too long)."""
    try:
        return future.result(timeout=timeout)
    except FutureTimeout as error:
        raise FetchError(f"gave up waiting {timeout:g} s for a shared fetch") from error
