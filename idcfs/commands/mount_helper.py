"""`mount -t fuse.idcfs SOURCE MOUNTPOINT -o OPTIONS` and fstab lines, as `idcfs mount`.

mount(8) hands a `fuse.TYPE` mount to fuse3's helper `/sbin/mount.fuse3`, which runs
`TYPE SOURCE MOUNTPOINT -o OPTIONS` through `/bin/sh -c` with the shell's default PATH
(mount(8) drops the caller's PATH; /usr/local/bin is on the default one, where
scripts/install.sh links `idcfs`). So this call is `idcfs SOURCE MOUNTPOINT -o ...`:
translated here into the `idcfs mount` arguments it means, then parsed as those.

What arrives in OPTIONS (seen with strace on Debian 12, util-linux 2.38, fuse3 3.14):
mount(8) keeps `x-*`, `comment=`, `noauto`, `defaults` to itself, turns `user` into
`nodev,noexec,nosuid`, and puts `rw` first unless `ro` was given; mount.fuse3 takes out
`_netdev`, `nofail`, `user`, `users`, `auto`, `noauto`, `setuid=`, `drop_privileges`
and appends `dev,suid` unless `nodev`/`nosuid` were given. Every name is accepted here
all the same (called by hand, or by a mount(8) that passes more), and ignored when it
is mount(8)'s business. `rw` is refused: idcfs is read-only, so the line says `ro`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

from idcfs.errors import without_credentials

IDC_SOURCE = "idc"
URL_SCHEMES = ("http://", "https://")
# mount(8)'s and mount.fuse3's own options: they reach us at most by hand, and mean
# nothing to the daemon (ro: every idcfs mount is read-only anyway).
IGNORED = frozenset({"ro", "defaults", "auto", "noauto", "user", "users", "nouser", "owner",
                     "group", "_netdev", "nofail", "drop_privileges"})
IGNORED_PREFIXES = ("x-", "comment=", "setuid=")
# Kernel mount flags libfuse itself sets (lib/mount.c), and FUSE's own mount options:
# handed to libfuse as `-o` options of `idcfs mount`.
FUSE_FLAGS = frozenset({"dev", "nodev", "suid", "nosuid", "exec", "noexec", "sync", "async",
                        "dirsync", "noatime", "nodiratime", "norelatime", "nostrictatime",
                        "symfollow", "nosymfollow", "allow_other", "allow_root",
                        "default_permissions", "auto_unmount", "nonempty"})
FUSE_PREFIXES = ("fsname=", "max_read=")
REFUSED = {
    "rw": "idcfs is read-only: give the option ro (mount(8) passes rw unless told ro)",
    "foreground": "mount(8) waits for its helper to return; idcfs serves in the background",
    "url": "give the DICOMweb URL as the SOURCE, not as url=",
}


class HelperCallError(ValueError):
    """A mount(8)-style call that cannot be carried out; the message is one line."""


@dataclass(frozen=True)
class MountOption:
    """One `idcfs mount` option as a mount(8) option: `--cache-size` is `cache_size`."""

    flag: str  # the option as `idcfs mount` spells it, e.g. "--cache-size"
    takes_value: bool


def as_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """mount(8)'s call `idcfs SOURCE MOUNTPOINT -o OPTIONS` as the `idcfs mount` arguments
    it means; any other command line as given."""
    commands = parser_commands(parser)
    if not is_helper_call(list(argv), set(commands)):
        return list(argv)
    return mount_arguments(list(argv), mount_options(commands["mount"]))


def is_helper_call(argv: list[str], commands: set[str]) -> bool:
    """Whether `argv` is `SOURCE MOUNTPOINT [-o OPTIONS]...` rather than a command."""
    return len(argv) >= 2 and argv[0] not in commands and not argv[0].startswith("-")


def parser_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of `parser` by name (argparse keeps them in its subparsers action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def mount_options(mount_parser: argparse.ArgumentParser) -> dict[str, MountOption]:
    """Every long option of `idcfs mount` by its mount(8) name (dashes as underscores),
    so an option added to `idcfs mount` is an fstab option too."""
    found = {}
    for action in mount_parser._actions:
        flags = [flag for flag in action.option_strings if flag.startswith("--")]
        if flags and action.dest not in ("help", "fuse_options"):
            name = flags[0][2:].replace("-", "_")
            found[name] = MountOption(flags[0], action.nargs != 0)
    return found


def mount_arguments(argv: list[str], options: dict[str, MountOption]) -> list[str]:
    """`SOURCE MOUNTPOINT -o a=1,b ...` → `mount --a 1 --b ... -o FUSE MOUNTPOINT`;
    HelperCallError (one line) for a source or option idcfs cannot take."""
    source, mountpoint, *rest = argv
    arguments = ["mount", *_source_arguments(source)]
    shown = without_credentials(source)  # /proc/mounts is world-readable
    fuse = [f"fsname={shown}"] if "," not in shown else []
    for option in _option_words(rest):
        if option in IGNORED or option.startswith(IGNORED_PREFIXES):
            continue
        if option in FUSE_FLAGS or option.startswith(FUSE_PREFIXES):
            fuse.append(option)
            continue
        arguments += _idcfs_option(option, options)
    return [*arguments, "-o", ",".join(fuse), mountpoint]


def _source_arguments(source: str) -> list[str]:
    if source == IDC_SOURCE:
        return []
    if source.startswith(URL_SCHEMES):
        return ["--url", source]
    raise HelperCallError(f"unknown command or mount source {source!r} (commands: see "
                          "idcfs --help; a mount SOURCE is idc or a DICOMweb URL, http(s)://...)")


def _option_words(rest: list[str]) -> list[str]:
    """The comma-separated words of every `-o OPTIONS` (-n, -v, -s of mount(8) ignored)."""
    words: list[str] = []
    arguments = iter(rest)
    for argument in arguments:
        if argument == "-o":
            words += next(arguments, "").split(",")
        elif argument.startswith("-o"):
            words += argument[2:].split(",")
        elif argument not in ("-n", "-v", "-s", "-f"):
            raise HelperCallError(f"unexpected argument {argument!r} after SOURCE MOUNTPOINT "
                                  "(options go in -o name=value,...)")
    return [word for word in words if word]


def _idcfs_option(option: str, options: dict[str, MountOption]) -> list[str]:
    name, has_value, value = option.partition("=")
    name = name.replace("-", "_")
    if name in REFUSED:
        raise HelperCallError(f"mount option {name}: {REFUSED[name]}")
    known = options.get(name)
    if known is None:
        raise HelperCallError(f"unknown mount option {name!r} (every `idcfs mount` option "
                              "works as name=value, e.g. cache_size=4G)")
    if known.takes_value and not has_value:
        raise HelperCallError(f"mount option {name} needs a value: {name}=...")
    if not known.takes_value and has_value:
        raise HelperCallError(f"mount option {name} takes no value")
    return [f"{known.flag}={value}"] if known.takes_value else [known.flag]
