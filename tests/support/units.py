"""Running a systemd unit's commands the way systemd would, without systemd.

Tests read `systemd/idcfs@.service` itself: its EnvironmentFile= lines (with /etc/default
moved to a folder of the test's), its ExecStartPre= (a leading "-" ignores failure),
ExecStart= and ExecStop= lines with %f, %i and $VARIABLE expanded as systemd does
(specifiers within a word, an unbraced $VARIABLE split at whitespace), and
/usr/local/bin/idcfs run as this checkout's `python -m idcfs`. So what the tests check is
what the unit file says, not a copy of it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
SERVICE_FILE = REPOSITORY / "systemd" / "idcfs@.service"
INSTALLED_IDCFS = "/usr/local/bin/idcfs"
COMMAND_TIMEOUT_S = 60.0


@dataclass
class UnitCommands:
    """The [Service] lines of a unit file that tests run, in order of appearance."""

    environment_files: list[str] = field(default_factory=list)
    start_pre: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)


def read_unit(path: Path = SERVICE_FILE) -> UnitCommands:
    unit = UnitCommands()
    lists = {"EnvironmentFile": unit.environment_files, "ExecStartPre": unit.start_pre,
             "ExecStart": unit.start, "ExecStop": unit.stop}
    for line in path.read_text().splitlines():
        key, found, value = line.partition("=")
        if not found or line.startswith("#"):
            continue
        if key in lists:
            lists[key].append(value)
        else:
            unit.settings[key] = value
    return unit


@dataclass
class UnitRunner:
    """One instance of a unit (its escaped instance name and path) and where its
    /etc/default files are for this test."""

    unit: UnitCommands
    instance: str  # the escaped path, e.g. "tmp-x-mnt" for /tmp/x/mnt
    path: Path  # %f
    etc_default: Path  # stands for /etc/default

    def environment(self) -> dict[str, str]:
        """The variables of every EnvironmentFile= that exists, later files winning."""
        found: dict[str, str] = {}
        for entry in self.unit.environment_files:
            name = self._specifiers(entry.lstrip("-"))
            local = self.etc_default / Path(name).relative_to("/etc/default")
            if local.exists():
                for line in local.read_text().splitlines():
                    key, _, value = line.partition("=")
                    if key.strip() and not key.startswith("#"):
                        found[key.strip()] = " ".join(shlex.split(value))
        return found

    def argv(self, line: str) -> tuple[list[str], bool]:
        """The argv of one Exec line, and whether its failure is ignored ("-")."""
        ignore = line.startswith("-")
        variables = self.environment()
        words: list[str] = []
        for word in shlex.split(line.lstrip("-")):
            variable = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
            if variable:
                words += variables.get(variable.group(1), "").split()
            else:
                words.append(self._specifiers(word))
        if words[0] == INSTALLED_IDCFS:
            words[:1] = [sys.executable, "-m", "idcfs"]
        return words, ignore

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        """Run one ExecStartPre=/ExecStop= line to its end (bounded); an AssertionError
        when it fails and its failure is not ignored."""
        argv, ignore = self.argv(line)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                                env=_checkout_environment())
        assert ignore or result.returncode == 0, f"{line}: {result.stderr}"
        return result

    def start(self, notify_socket: Path) -> subprocess.Popen[str]:
        """ExecStartPre= lines, then ExecStart= as the service's main process, with
        NOTIFY_SOCKET set as systemd sets it for Type=notify."""
        for line in self.unit.start_pre:
            self.run(line)
        (line,) = self.unit.start
        argv, _ = self.argv(line)
        environment = {**_checkout_environment(), "NOTIFY_SOCKET": str(notify_socket)}
        return subprocess.Popen(argv, env=environment, text=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)

    def _specifiers(self, text: str) -> str:
        return text.replace("%f", str(self.path)).replace("%i", self.instance)


def _checkout_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPOSITORY)}
