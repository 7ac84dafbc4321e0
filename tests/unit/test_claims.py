"""Claims: the first to want a key produces it, everyone else waits for that one result."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from idcfs.errors import FetchError
from idcfs.fetch.claims import Claims, fail_all, release_all


def test_the_first_caller_gets_the_claim_and_later_ones_its_future() -> None:
    claims: Claims[bytes] = Claims()
    first_future, first_claim = claims.claim("k")
    second_future, second_claim = claims.claim("k")
    assert first_claim is not None and second_claim is None
    assert second_future is first_future and claims.running("k") is first_future


def test_resolve_gives_every_waiter_the_value_and_leaves_the_table() -> None:
    claims: Claims[bytes] = Claims()
    future, claim = claims.claim("k")
    assert claim is not None
    claim.resolve(b"tile")
    assert future.result(0) == b"tile" and claim.done
    assert claims.running("k") is None
    _, fresh = claims.claim("k")
    assert fresh is not None and fresh is not claim


def test_fail_gives_every_waiter_the_error_and_the_next_caller_claims_afresh() -> None:
    claims: Claims[bytes] = Claims()
    future, claim = claims.claim("k")
    assert claim is not None
    claim.fail(FetchError("HTTP 500"))
    with pytest.raises(FetchError, match="HTTP 500"):
        future.result(0)
    again, fresh = claims.claim("k")
    assert fresh is not None and again is not future


def test_a_released_claims_waiters_get_a_fetch_error_saying_why() -> None:
    claims: Claims[bytes] = Claims()
    future, claim = claims.claim("k")
    assert claim is not None
    claim.release("read-ahead abandoned at unmount")
    with pytest.raises(FetchError, match="abandoned at unmount"):
        future.result(0)
    assert claims.running("k") is None


def test_ending_a_claim_again_keeps_its_first_outcome() -> None:
    claims: Claims[bytes] = Claims()
    future, claim = claims.claim("k")
    assert claim is not None
    claim.resolve(b"tile")
    claim.release("tile not fetched")
    claim.fail(FetchError("late"))
    assert future.result(0) == b"tile"


def test_release_all_and_fail_all_end_only_the_claims_still_open() -> None:
    claims: Claims[bytes] = Claims()
    owned = [claims.claim(key)[1] for key in ("a", "b", "c")]
    a, b, c = (claim for claim in owned if claim is not None)
    a.resolve(b"A")
    fail_all([a, b], FetchError("HTTP 503"))
    release_all([a, b, c], "tile not fetched")
    assert a.future.result(0) == b"A"
    assert str(b.future.exception(0)) == "HTTP 503"
    assert str(c.future.exception(0)) == "tile not fetched"
    assert [claims.running(key) for key in ("a", "b", "c")] == [None, None, None]


def test_a_claim_ended_twice_leaves_a_newer_claim_of_its_key_in_place() -> None:
    """A batch's `release_all` after its tiles resolved (the loader's `finally`) must not
    remove the claim a new reader took of one of those keys meanwhile."""
    claims: Claims[bytes] = Claims()
    _, old = claims.claim("k")
    assert old is not None
    old.resolve(b"tile")  # leaves the table: a reader may claim the key again
    newer_future, newer = claims.claim("k")
    assert newer is not None
    release_all([old], "tile not fetched")
    assert claims.running("k") is newer_future
    _, third = claims.claim("k")
    assert third is None  # single flight: no second fetch of the key


def test_run_shares_one_computation() -> None:
    claims: Claims[int] = Claims()
    calls = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.1)
        return 42

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(claims.run("k", compute)))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 5 and len(calls) == 1


def test_run_shares_an_error_and_computes_again_after_it() -> None:
    claims: Claims[int] = Claims()
    started = threading.Event()

    def fail() -> int:
        started.set()
        time.sleep(0.1)
        raise FetchError("series metadata: HTTP 502")

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(claims.run, "k", fail)
        started.wait(5)
        second = pool.submit(claims.run, "k", lambda: 7)
        errors = [type(future.exception(5)) for future in (first, second)]
    assert errors == [FetchError, FetchError]  # the waiter shared the failure
    assert claims.run("k", lambda: 7) == 7


def test_a_waiter_gives_up_after_the_wait_timeout() -> None:
    claims: Claims[int] = Claims(wait_timeout=0.05)
    _, claim = claims.claim("k")
    assert claim is not None
    with pytest.raises(FetchError, match="gave up waiting"):
        claims.run("k", lambda: 1)
    claim.resolve(1)
