# Sourced by up.sh and test.sh (from the checkout's root): make `python3 -m venv` work,
# then make .venv. On a fresh Debian machine `python3 -m venv` needs python3-venv (the
# ensurepip that venv uses is packaged apart from python3), so it is installed when missing.
ensure_venv() {
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    echo "== python3 -m venv needs Debian's python3-venv: installing it"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv
  fi
  # --clear: a .venv that an earlier run left without pip (venv failed for want of
  # ensurepip) is made again rather than used.
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    python3 -m venv --clear .venv
  fi
}
