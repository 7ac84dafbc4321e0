#!/usr/bin/env bash
# Install idcfs for every user (needs root: run as root or with sudo):
#   Debian's FUSE 3 and build tools (apt-get); a virtual environment in /opt/idcfs built
#   from the system's Python, /usr/bin/python3 (never an interpreter under a home
#   directory, which other users cannot run); the `idcfs` command linked into
#   /usr/local/bin, where mount.fuse3 finds it for `mount -t fuse.idcfs` and fstab lines;
#   the systemd unit idcfs@.service in /etc/systemd/system, and examples (a .mount unit)
#   in /opt/idcfs/share/idcfs.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022  # everything installed is readable (and the command runnable) by every user
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv >/dev/null
prefix=${IDCFS_PREFIX:-/opt/idcfs}
python=/usr/bin/python3
if [ "$(readlink -f "$prefix/bin/python" 2>/dev/null)" != "$(readlink -f "$python")" ]; then
  $sudo "$python" -m venv --clear "$prefix"  # new, or built from another interpreter
fi
$sudo "$prefix/bin/python" -m pip install -q --upgrade pip >/dev/null
$sudo "$prefix/bin/python" -m pip install -q ".[google]"
$sudo ln -sf "$prefix/bin/idcfs" /usr/local/bin/idcfs
$sudo install -d "$prefix/share/idcfs"
$sudo install -m 644 systemd/idcfs@.service systemd/mnt-idc.mount "$prefix/share/idcfs/"
if [ -d /etc/systemd/system ]; then
  $sudo install -m 644 systemd/idcfs@.service /etc/systemd/system/idcfs@.service
  [ ! -d /run/systemd/system ] || $sudo systemctl daemon-reload
fi
if [ "$(id -u)" -eq 0 ] && id nobody >/dev/null 2>&1; then
  runuser -u nobody -- /usr/local/bin/idcfs --version >/dev/null  # runs for every user
fi
echo "installed: $(/usr/local/bin/idcfs --version)"
# Mount IDC at /mnt/idc (or another path) at boot, either
#   sudo systemctl enable --now idcfs@mnt-idc.service      (systemd-escape -p /mnt/idc)
# with options in /etc/default/idcfs or /etc/default/idcfs-mnt-idc, e.g.
#   IDCFS_OPTIONS="--cache-size 4G -o allow_other"
# or an fstab line (README.md, "fstab and systemd"):
#   idc /mnt/idc fuse.idcfs ro,_netdev,nofail,allow_other,cache_size=4G 0 0
