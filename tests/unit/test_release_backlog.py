"""ReleaseBacklog (idcfs/fuse/releases.py): opens wait while closed files' releases lag,
and only as long as releases come or the bound allows."""

from __future__ import annotations

import trio
import trio.testing

from idcfs.fuse.openfiles import OpenFile, OpenFiles
from idcfs.fuse.releases import ReleaseBacklog
from idcfs.metrics import Metrics

SURGE, SETTLED, MAX_WAIT_S = 8, 2, 0.5


def backlog_of(handles: int) -> tuple[OpenFiles, ReleaseBacklog, list[int]]:
    open_files = OpenFiles()
    numbers = [open_files.add(OpenFile(inode, 10, b"x" * 10)) for inode in range(handles)]
    return open_files, ReleaseBacklog(open_files, Metrics(), SURGE, SETTLED, MAX_WAIT_S), numbers


def run(test) -> None:  # type: ignore[no-untyped-def]
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_open_below_the_surge_does_not_wait() -> None:
    _, backlog, _ = backlog_of(SURGE - 1)

    async def test() -> None:
        start = trio.current_time()
        await backlog.before_open()
        assert trio.current_time() == start
        assert backlog.drains.value == 0

    run(test)


def test_opens_wait_until_releases_bring_the_handles_down_to_settled() -> None:
    open_files, backlog, numbers = backlog_of(SURGE)
    admitted: list[float] = []

    async def open_one() -> None:
        await backlog.before_open()
        admitted.append(trio.current_time())

    async def test() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(open_one)
            await trio.sleep(0.1)
            assert admitted == []  # all three wait: one drain
            for number in numbers[: SURGE - SETTLED - 1]:
                open_files.remove(number)
                backlog.released()
            await trio.sleep(0.1)
            assert admitted == []  # SETTLED + 1 still open
            open_files.remove(numbers[SURGE - SETTLED - 1])
            backlog.released()
        assert admitted == [0.2, 0.2, 0.2]
        assert backlog.drains.value == 1 and backlog.opens_held.value == 3

    run(test)


def test_handles_held_through_a_drain_wait_once_then_count_as_held() -> None:
    open_files, backlog, _ = backlog_of(SURGE)

    async def test() -> None:
        await backlog.before_open()  # no release comes: the bound ends the wait
        assert trio.current_time() == MAX_WAIT_S
        for inode in range(SURGE - 1):  # up to SURGE above the handles held: no wait
            open_files.add(OpenFile(1000 + inode, 10, None))
            await backlog.before_open()
        assert trio.current_time() == MAX_WAIT_S
        open_files.add(OpenFile(2000, 10, None))
        await backlog.before_open()  # SURGE above them: the next drain
        assert trio.current_time() == 2 * MAX_WAIT_S
        assert backlog.drains.value == 2

    run(test)
