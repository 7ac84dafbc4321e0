"""mount(8)'s call `idcfs SOURCE MOUNTPOINT -o OPTIONS` as `idcfs mount` arguments, parsed
by the real `idcfs` parser; the STATUS= line of systemd notifications. (Through the real
mount(8): tests/e2e/test_mount_fstab.py.)"""

from __future__ import annotations

import argparse

import pytest

from idcfs.cli import build_parser
from idcfs.commands.mount_helper import HelperCallError, as_command
from idcfs.fuse.readiness import status_line

URL = "http://127.0.0.1:8042/dicom-web"


def _parsed(*argv: str) -> argparse.Namespace:
    parser = build_parser()
    return parser.parse_args(as_command(parser, list(argv)))


def _refused(*argv: str) -> str:
    with pytest.raises(HelperCallError) as refused:
        as_command(build_parser(), list(argv))
    return str(refused.value)


def test_idcfs_mount_options_are_name_value_options() -> None:
    args = _parsed(URL, "/mnt/slides", "-o", "ro,cache_size=4G,cache_dir=/var/cache/idcfs,"
                   "collection=tcga_brca,collection=cptac_ccrcc,max_connections=4,"
                   "readahead-size=0,debug,timeout=12.5")
    assert args.command == "mount" and str(args.mountpoint) == "/mnt/slides"
    assert args.url == URL
    assert args.cache_size == 4 << 30 and str(args.cache_dir) == "/var/cache/idcfs"
    assert args.collection == ["tcga_brca", "cptac_ccrcc"]
    assert args.max_connections == 4 and args.readahead_size == 0
    assert args.debug and args.timeout == 12.5 and not args.foreground


def test_idc_is_all_of_idc() -> None:
    args = _parsed("idc", "/mnt/idc", "-o", "ro,source=gcs")
    assert args.url is None and args.source == "gcs"
    assert args.fuse_options == ["fsname=idc"]


def test_mount8_generic_options_are_ignored_and_kernel_ones_reach_libfuse() -> None:
    """What mount(8) and mount.fuse3 pass (or a user types) that is theirs: ignored;
    kernel flags and FUSE options: to libfuse, with fsname=SOURCE for findmnt/mount -a."""
    args = _parsed(URL, "/mnt/x", "-o", "ro,_netdev,nofail,noauto,auto,user,users,nouser,"
                   "defaults,x-systemd.automount,x-systemd.requires=network-online.target,"
                   "comment=systemd.automount,setuid=idcfs,nodev,nosuid,noexec,noatime,dev,"
                   "suid,allow_other,default_permissions,nonempty", "-n", "-v")
    (fuse,) = args.fuse_options
    assert fuse.split(",") == [f"fsname={URL}", "nodev", "nosuid", "noexec", "noatime", "dev",
                               "suid", "allow_other", "default_permissions", "nonempty"]


def test_credentials_in_the_source_never_reach_proc_mounts() -> None:
    args = _parsed("https://user:secret@pacs.example/dicom-web", "/mnt/x", "-o", "ro")
    assert args.url == "https://user:secret@pacs.example/dicom-web"  # the client needs them
    assert args.fuse_options == ["fsname=https://pacs.example/dicom-web"]


@pytest.mark.parametrize(("options", "said"), [
    ("rw,cache_size=1G", "read-only"),
    ("ro,foreground", "background"),
    (f"ro,url={URL}", "SOURCE"),
    ("ro,colour=blue", "unknown mount option 'colour'"),
    ("ro,cache_size", "needs a value"),
    ("ro,debug=yes", "takes no value"),
    ("ro,subtype=other", "unknown mount option 'subtype'"),  # it must stay fuse.idcfs
])
def test_options_idcfs_cannot_take_are_refused(options: str, said: str) -> None:
    message = _refused(URL, "/mnt/x", "-o", options)
    assert said in message and "\n" not in message


def test_a_source_that_is_neither_idc_nor_a_url_is_refused() -> None:
    assert "idc or a DICOMweb URL" in _refused("pacs.example/dicom-web", "/mnt/x", "-o", "ro")
    assert "-o name=value" in _refused(URL, "/mnt/x", "cache_size=1G")


def test_commands_are_left_as_they_are() -> None:
    parser = build_parser()
    for argv in (["mount", "--url", URL, "/mnt/x"], ["unmount", "-z", "/mnt/x"], ["--help"],
                 ["mount"]):
        assert as_command(parser, argv) == argv


def test_status_line_counts_requests_of_either_kind_of_source() -> None:
    dicomweb = {"fuse": {"reads_served": 12}, "frames_fetched": 40, "requests_sent": 3,
                "source": {"description": URL}}
    assert status_line(dicomweb) == ("serving: 12 reads answered, 40 frames fetched, "
                                     "3 requests sent")
    bucket = {"source": {"requests": {"GET": 5, "LIST": 2}}}
    assert status_line(bucket) == "serving: 0 reads answered, 0 frames fetched, 7 requests sent"
