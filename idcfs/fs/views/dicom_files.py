"""The original instance files of a series (docs/LAYOUT.md): `dicom/<SOPInstanceUID>.dcm`,
each at its exact size and read by ranges, so DICOM tools (OpenSlide, wsidicom, QuPath,
dcmtk) open a slide straight from the mount with random access.

Only for a source whose instances are files (`InstanceFiles`: `--files`, the IDC
buckets); `idcfs.mount` adds this view for such a source alone. Listing `dicom/` reads
nothing (sizes come from the source's listing); opening a file reads nothing; a read
that reaches the daemon is one range of the file, or, when it continues the previous one
(a scan), a block that grows to 8 MiB (`RangedFile`), kept for the next reads in one
LRU of 64 MiB shared by every instance file.
"""

from __future__ import annotations

from idcfs.cache.memory import ByteLRU
from idcfs.catalog.base import SeriesEntry
from idcfs.fs.nodes import DirNode, Node, RangedFile
from idcfs.metrics import Metrics
from idcfs.slide.model import InstanceInfo, Slide
from idcfs.source.base import InstanceFiles

DIRECTORY = "dicom"
SCAN_BLOCKS_BYTES = 64 << 20  # blocks read ahead for scans of instance files, all files


class DicomFilesView:
    """Adds `dicom/` with one `<SOPInstanceUID>.dcm` per instance of the slide."""

    def __init__(self, files: InstanceFiles, metrics: Metrics,
                 scan_blocks: ByteLRU | None = None) -> None:
        self.files = files
        self.scan_blocks = scan_blocks if scan_blocks is not None else ByteLRU(SCAN_BLOCKS_BYTES)
        self._reads = metrics.counter("instance_files.range_reads")
        self._bytes = metrics.counter("instance_files.bytes_read")

    def series_nodes(self, slide: Slide, entry: SeriesEntry) -> list[Node]:
        return [DirNode(DIRECTORY, lambda: self._instance_files(slide))]

    def _instance_files(self, slide: Slide) -> list[Node]:
        """Every instance of the slide model (WSI instances it could read), by UID."""
        return [
            RangedFile(f"{uid}.dcm", self.files.instance_file_size(info),
                       lambda start, length, i=info: self._read(i, start, length),
                       self.scan_blocks)
            for uid, info in sorted(slide.instances.items())
        ]

    def _read(self, instance: InstanceInfo, start: int, length: int) -> bytes:
        self._reads.add()
        data = self.files.read_instance_file(instance, start, length)
        self._bytes.add(len(data))
        return data
