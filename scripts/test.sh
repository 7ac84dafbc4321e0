#!/usr/bin/env bash
# Install everything the tests need (Debian packages when missing, Python packages in
# .venv) and run the whole suite: ruff, then pytest against a real Orthanc server with
# real FUSE mounts. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv orthanc orthanc-dicomweb dcmtk rsync tar chromium)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
command -v npm >/dev/null || missing+=(npm)  # Node.js's own build ships npm too
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[test,bench]"

# OpenSeadragon for the browser test (tests/support/browser.py), pinned, project-local.
# The browser is Debian's chromium above, driven by Playwright: never `playwright install`.
openseadragon=6.1.1
if [ ! -f .node/node_modules/openseadragon/build/openseadragon/openseadragon.min.js ] ||
   ! grep -q "\"version\": \"$openseadragon\"" .node/node_modules/openseadragon/package.json; then
  npm install --prefix .node --no-save --no-audit --no-fund --silent "openseadragon@$openseadragon"
fi

.venv/bin/ruff check .
# Two workers, each with its own servers, one test module per worker at a time (the
# module's fixtures start once): most e2e time is waiting on injected latency and
# timeouts, so two run in about 0.6 of the time on 2 cores. IDCFS_TEST_WORKERS=0: serial.
workers=${IDCFS_TEST_WORKERS:-2}
parallel=()
[ "$workers" = 0 ] || parallel=(-n "$workers" --dist loadfile)
.venv/bin/python -m pytest -q "${parallel[@]}" "$@"
