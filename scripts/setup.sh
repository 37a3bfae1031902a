#!/usr/bin/env bash
# Usage: bash scripts/setup.sh
# Installs everything hf_rnn_attn needs on a fresh Debian machine: the SWORD Bible texts (apt) and a
# virtual environment .venv with the pinned Python stack and the package in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v diatheke >/dev/null || [ ! -d /usr/share/sword/modules/texts/ztext/spaRV1909eb ] \
    || [ ! -d /usr/share/sword/modules/texts/ztext/engWEB2015eb ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq diatheke sword-text-sparv sword-text-web >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import hf_rnn_attn" 
