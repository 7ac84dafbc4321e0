"""Transfer syntaxes learned from frames, for instances whose metadata has none.

Some DICOMweb servers leave the file meta group (0002) out of their metadata, so the
metadata has no TransferSyntaxUID (Orthanc does); the frames then name it in their
Content-Type (`transfer-syntax=` of each multipart part). What the first fetch of an
instance's frames says is kept here for slide.json, and in the disk cache when there is
one, so a remount that serves every tile from disk still shows it.
"""

from __future__ import annotations

import threading

from idcfs.cache.disk import DiskCache

DISK_KEY = "transfer-syntax-v1/{uid}"


class LearnedSyntaxes:
    """Transfer syntax by SOPInstanceUID, as frames gave it; thread-safe."""

    def __init__(self, disk: DiskCache | None = None) -> None:
        self._disk = disk
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def learn(self, instance_uid: str, syntax: str | None) -> None:
        """Keep what a frame of the instance said (nothing when it said nothing)."""
        syntax = syntax.strip() if syntax else ""
        if not syntax:
            return
        with self._lock:
            if self._known.get(instance_uid) == syntax:
                return
            self._known[instance_uid] = syntax
        if self._disk is not None:
            self._disk.put(DISK_KEY.format(uid=instance_uid), syntax.encode())

    def recall(self, instance_uids: list[str]) -> None:
        """Read what an earlier mount learned of these instances from the disk cache
        (blocking: call it where a listing may block, so `of` never touches the disk)."""
        if self._disk is None:
            return
        with self._lock:
            missing = [uid for uid in instance_uids if uid not in self._known]
        stored = self._disk.get_many([DISK_KEY.format(uid=uid) for uid in missing])
        with self._lock:
            for uid in missing:
                found = stored.get(DISK_KEY.format(uid=uid))
                if found:
                    self._known.setdefault(uid, found.decode(errors="replace"))

    def of(self, instance_uids: list[str]) -> dict[str, str]:
        """The syntaxes learned for these instances (those learned); never blocks."""
        with self._lock:
            return {uid: self._known[uid] for uid in instance_uids if uid in self._known}
