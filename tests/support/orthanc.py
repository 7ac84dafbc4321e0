"""A throw-away Orthanc DICOMweb server for tests and benchmarks.

`OrthancServer` runs Debian's ``Orthanc`` binary as a plain child process with a JSON
configuration written into its own temporary directory (storage and index live there
too), on a free loopback port, with the DICOMweb plugin enabled at ``/dicom-web/``, no
DICOM network server and no authentication. Stopping it ends only that child process.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tests.support.service import ProcessService

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STARTUP_TIMEOUT_S = 30.0
UPLOAD_TIMEOUT_S = 120.0


class OrthancError(RuntimeError):
    """Orthanc could not be started, or refused an upload."""


def orthanc_binary() -> str | None:
    """Full path of the Orthanc executable, or None when it is not installed."""
    return shutil.which(ORTHANC_BINARY) or shutil.which(ORTHANC_BINARY, path="/usr/sbin")


def orthanc_available() -> bool:
    """True when both the Orthanc binary and its DICOMweb plugin are installed."""
    return orthanc_binary() is not None and DICOMWEB_PLUGIN.is_file()


def orthanc_config(work_dir: Path, port: int) -> dict[str, object]:
    """The configuration: fast, quiet, DICOMweb on, no DICOM server, no authentication.

    Orthanc 1.10 always listens on every interface; with RemoteAccessAllowed false it
    refuses every client that is not on this machine (clients here use 127.0.0.1).
    """
    return {
        "Name": "idcfs-test",
        "StorageDirectory": str(work_dir / "storage"),
        "IndexDirectory": str(work_dir / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpThreadsCount": 128,
        "HttpTimeout": 60,
        "HttpCompressionEnabled": False,
        "SaveJobs": False,
        "ConcurrentJobs": 1,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "OverwriteInstances": False,
        "StableAge": 3600,
        "ExecuteLuaEnabled": False,
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


class OrthancServer(ProcessService):
    """One Orthanc child process: its URLs, uploads into it, and stopping it.

    Use as a context manager, or call `start()` / `stop()`. Holds the temporary
    directory (configuration, storage, index, log) that is removed on stop.
    """

    name = "Orthanc"
    port_in_use = "port of the http server is privileged or already in use"
    log_tail_lines = 40
    failure = OrthancError

    def __init__(self, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        super().__init__(startup_timeout_s)
        self._work_dir: Path | None = None
        self._binary = ""

    @property
    def base_url(self) -> str:
        """Root of Orthanc's REST API, e.g. http://127.0.0.1:8042."""
        return f"http://{self.host}:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """DICOMweb root (QIDO/WADO/STOW), e.g. http://127.0.0.1:8042/dicom-web."""
        return f"{self.base_url}/dicom-web"

    def start(self) -> None:
        """Start Orthanc and wait (bounded) until its REST API answers."""
        binary = orthanc_binary()
        if binary is None or not DICOMWEB_PLUGIN.is_file():
            raise OrthancError("Orthanc or its DICOMweb plugin is not installed")
        self._binary = binary
        self._work_dir = Path(tempfile.mkdtemp(prefix="idcfs-orthanc-"))
        self._launch_until_ready()
        self._check_dicomweb()

    def _new_log_path(self) -> Path:
        assert self._work_dir is not None
        return self._work_dir / "orthanc.log"

    def _command(self) -> list[str]:
        assert self._work_dir is not None
        config_path = self._work_dir / "orthanc.json"
        config_path.write_text(json.dumps(orthanc_config(self._work_dir, self.port), indent=2))
        return [self._binary, "--no-jobs", str(config_path)]

    def _check_dicomweb(self) -> None:
        """Orthanc starts even when a plugin fails to load: make sure DICOMweb is there."""
        plugins = self.get_json("/plugins")
        if not isinstance(plugins, list) or "dicom-web" not in plugins:
            message = f"Orthanc runs without its DICOMweb plugin:\n{self.log_tail()}"
            self.stop()
            raise OrthancError(message)

    def _answers(self) -> bool:
        try:
            status, _ = self._request("GET", "/system", timeout=2.0)
        except OSError:
            return False
        return status == 200

    def _request(
        self, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def upload(self, paths: Iterable[os.PathLike[str] | str]) -> None:
        """Store DICOM files (POST /instances); a file already stored is not an error."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=UPLOAD_TIMEOUT_S)
        try:
            for path in paths:
                self._upload_one(connection, Path(path))
        finally:
            connection.close()

    @staticmethod
    def _upload_one(connection: http.client.HTTPConnection, path: Path) -> None:
        headers = {"Content-Type": "application/dicom"}
        connection.request("POST", "/instances", body=path.read_bytes(), headers=headers)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OrthancError(f"upload of {path} failed: HTTP {response.status} {body[:300]!r}")
        status = json.loads(body).get("Status")
        if status not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload of {path} answered status {status!r}")

    def get_json(self, path: str) -> object:
        """GET a REST path of Orthanc and decode its JSON answer."""
        status, body = self._request("GET", path)
        if status != 200:
            raise OrthancError(f"GET {path}: HTTP {status} {body[:300]!r}")
        return json.loads(body)

    def stop(self) -> None:
        """Terminate the Orthanc process (kill it if it lingers) and remove its files."""
        atexit.unregister(self.stop)
        self._end_process()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
