"""scripts/install.sh, run for real (issue 14, section 6): the venv from /usr/bin/python3,
`idcfs` runnable by every user, and found by mount.fuse3 for `mount -t fuse.idcfs`.

It runs apt-get and pip (about a minute), so only when IDCFS_TEST_INSTALL=1. It must not
change the machine's /usr/local/bin or /etc/systemd/system: it runs in a private mount
namespace where both are empty tmpfs, with IDCFS_PREFIX in a temporary folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import one_slide
from tests.support.orthanc import OrthancServer
from tests.support.slides import GeneratedSlide

REPOSITORY = Path(__file__).resolve().parents[2]
TILE = "level-0/0_0.jpg"

pytestmark = pytest.mark.skipif(
    os.environ.get("IDCFS_TEST_INSTALL") != "1" or os.geteuid() != 0
    or not shutil.which("unshare"),
    reason="runs apt-get and pip: only as root with IDCFS_TEST_INSTALL=1",
)


slide = one_slide.slide  # the module's fixtures
server = one_slide.server


@pytest.fixture
def public_folder() -> Iterator[Path]:
    """A folder every user may enter (pytest's own are 0700), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="idcfs-install-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_install_script_serves_every_user_and_mount_t_fuse_idcfs(
    server: OrthancServer, slide: GeneratedSlide, public_folder: Path,
) -> None:
    prefix, mountpoint = public_folder / "opt-idcfs", public_folder / "mnt"
    copy = public_folder / "tile"
    mountpoint.mkdir()
    tile = mountpoint / "studies" / slide.study_uid / slide.series_uid / TILE
    script = f"""set -e
mount -t tmpfs tmpfs /usr/local/bin
mount -t tmpfs tmpfs /etc/systemd/system
IDCFS_PREFIX="{prefix}" ./scripts/install.sh
echo "python: $(readlink -f "{prefix}/bin/python")"
echo "nobody: $(runuser -u nobody -- /usr/local/bin/idcfs --version)"
test -f /etc/systemd/system/idcfs@.service
mount -t fuse.idcfs "{server.dicomweb_url}" "{mountpoint}" -o ro,log_file={public_folder}/log
cat "{tile}" > "{copy}"
umount "{mountpoint}"
"""
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    environment["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             script], cwd=REPOSITORY, env=environment, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"python: {os.path.realpath('/usr/bin/python3')}" in result.stdout
    assert "nobody: idcfs " in result.stdout
    assert copy.read_bytes() == one_slide.stored_tile(server, slide, TILE)
