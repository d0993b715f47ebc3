#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then lint, type-check and test.
# Real servers come from Debian's packages; the tests start their own copies on free
# loopback ports, so a system service that apt may start does not matter.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # the demo page's browser test
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "== installing ${need[*]} from Debian"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

. scripts/venv.sh
ensure_venv
py=.venv/bin/python
echo "== installing the package with its test extras"
$py -m pip install -q --upgrade pip
$py -m pip install -q -e '.[test]'

echo "== ruff"
$py -m ruff check control tests load dashboards
$py -m ruff format --check control tests load dashboards
echo "== mypy"
$py -m mypy
echo "== import contracts (.importlinter)"
.venv/bin/lint-imports
echo "== pytest"
# Two workers, each taking whole modules (their module-scoped clusters stay whole): most
# tests wait on real servers and timers, so two share the 2 cores well (10.4 min serial,
# ~5 in two).
if [ $# -gt 0 ]; then
  $py -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
else
  # The lb watch test runs alone after the rest: beside another busy worker, HAProxy's soft
  # stop under it outlasted the test (a known issue, under investigation).
  alone=tests/integration/test_lb_watch.py
  $py -m pytest -q -p no:cacheprovider -n 2 --dist loadfile --ignore "$alone"
  $py -m pytest -q -p no:cacheprovider "$alone"
fi
