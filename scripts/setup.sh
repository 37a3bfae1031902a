#!/usr/bin/env bash
# Usage: bash scripts/setup.sh
# Installs everything hf_rnn_attn needs on a fresh Debian machine: the SWORD Bible texts, GNU time (for the
# benchmarks) and, for the demo's browser test, Chromium and its driver (apt), and a virtual environment .venv
# with the pinned Python stack and the package in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=""
apt_install() {  # apt-get install, after one apt-get update per run
  [ -n "$APT_UPDATED" ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
if ! command -v diatheke >/dev/null || [ ! -d /usr/share/sword/modules/texts/ztext/spaRV1909eb ] \
    || [ ! -d /usr/share/sword/modules/texts/ztext/engWEB2015eb ]; then
  apt_install diatheke sword-text-sparv sword-text-web
fi
if [ ! -x /usr/bin/time ]; then  # GNU time: scripts/benchmark_peers.py and quality_peers.py read peak memory from it
  apt_install time
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install --no-install-recommends chromium chromium-driver
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import hf_rnn_attn" 
