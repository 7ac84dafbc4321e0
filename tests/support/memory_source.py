"""An in-memory `FrameSource` fed by the slide generator, for fast tests without a server.

It holds DICOM files parsed with pydicom: series metadata is each dataset's DICOM JSON
(without the pixel data, as a DICOMweb server sends it), and frames are the stored
fragments (encapsulated) or slices of the pixel data (native). Every `frames` call is
recorded, and failures can be injected (`fail_next` for frame requests,
`fail_next_metadata` for series metadata) and requests slowed (`delay_s`), so loader,
read-ahead and tree tests can count requests and check the error paths and overlaps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.encaps import generate_frames

from idcfs.errors import FetchError
from idcfs.slide.model import InstanceInfo
from idcfs.source.base import Frame, InstanceMetadata

PIXEL_DATA = "7FE00010"
AVAILABLE_TRANSFER_SYNTAX = "00083002"


class MemorySource:
    """Series and frames from DICOM files held in memory; thread-safe."""

    def __init__(self, files: Iterable[Path], delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self._series: dict[tuple[str, str], list[InstanceMetadata]] = {}
        self._frames: dict[str, list[bytes]] = {}
        self._syntax: dict[str, str] = {}
        for path in files:
            self._add(pydicom.dcmread(path))
        self.requests: list[tuple[str, list[int]]] = []
        self.metadata_requests = 0
        self.fail_next: list[BaseException] = []
        self.fail_next_metadata: list[BaseException] = []
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return "memory"

    def series_metadata(self, study_uid: str, series_uid: str) -> list[InstanceMetadata]:
        with self._lock:
            self.metadata_requests += 1
            if self.fail_next_metadata:
                raise self.fail_next_metadata.pop(0)
        found = self._series.get((study_uid, series_uid))
        if found is None:
            raise FetchError(f"series {series_uid}: not held")
        return list(found)

    def frames(self, instance: InstanceInfo, numbers: Sequence[int]) -> list[Frame]:
        with self._lock:
            self.requests.append((instance.uid, list(numbers)))
            if self.fail_next:
                raise self.fail_next.pop(0)
        time.sleep(self.delay_s)
        stored = self._frames[instance.location]
        if any(not 1 <= number <= len(stored) for number in numbers):
            raise FetchError(f"instance {instance.uid}: no frame among {list(numbers)}")
        syntax = self._syntax[instance.location]
        return [Frame(stored[number - 1], syntax) for number in numbers]

    def close(self) -> None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {"requests_sent": len(self.requests) + self.metadata_requests}

    def _add(self, dataset: pydicom.Dataset) -> None:
        uid = str(dataset.SOPInstanceUID)
        metadata = dataset.to_json_dict(bulk_data_element_handler=lambda element: "")
        metadata.pop(PIXEL_DATA, None)
        syntax = str(dataset.file_meta.TransferSyntaxUID)
        metadata[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [syntax]}  # as WADO-RS does
        key = (str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID))
        self._series.setdefault(key, []).append(InstanceMetadata(uid, metadata))
        self._frames[uid] = _stored_frames(dataset)
        self._syntax[uid] = syntax


def _stored_frames(dataset: pydicom.Dataset) -> list[bytes]:
    frame_count = int(getattr(dataset, "NumberOfFrames", 1) or 1)
    pixel_data = dataset.PixelData
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(pixel_data, number_of_frames=frame_count))
    size = len(pixel_data) // frame_count
    return [pixel_data[index * size : (index + 1) * size] for index in range(frame_count)]
