#!/usr/bin/env bash
# Install imctl into .venv and run the local cluster (`imctl up`); extra arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
ensure_venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/imctl up "$@"
