#!/usr/bin/env bash
# Install idcfs for every user: Debian's FUSE 3 and build tools, a virtual environment in
# /opt/idcfs, and the `idcfs` command in /usr/local/bin. Run as root (or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
  fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv >/dev/null
prefix=${IDCFS_PREFIX:-/opt/idcfs}
$sudo "${PYTHON:-python3}" -m venv "$prefix"
$sudo "$prefix/bin/python" -m pip install -q --upgrade pip >/dev/null
$sudo "$prefix/bin/python" -m pip install -q ".[google]"
$sudo ln -sf "$prefix/bin/idcfs" /usr/local/bin/idcfs
echo "installed: $(idcfs --version)"
