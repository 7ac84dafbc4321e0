"""Start/stop and context-manager plumbing shared by the test services (Orthanc, relays)."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self


class Service:
    """Something started in the background and stopped again; `with` does both."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
