"""The two scripts a new user runs first (``./scripts/up.sh``, ``./scripts/test.sh``) on a
fresh Debian machine where ``python3 -m venv`` does not work until python3-venv is
installed: they install it (with sudo when not root) and then make the venv."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# A python3 whose venv works only once apt-get has installed python3-venv; the venv it
# makes has a python with pip.
FAKE_PYTHON = """#!/bin/sh
echo "python3 $*" >> "$LOG"
[ -f "$STATE/python3-venv" ] || exit 1
if [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ "$3" != "--help" ]; then
  for last; do :; done
  mkdir -p "$last/bin"
  printf '#!/bin/sh\\nexit 0\\n' > "$last/bin/python"
  chmod +x "$last/bin/python"
fi
exit 0
"""
FAKE_APT = """#!/bin/sh
echo "apt-get $*" >> "$LOG"
case "$*" in *"install"*python3-venv*) touch "$STATE/python3-venv";; esac
"""
FAKE_SUDO = """#!/bin/sh
echo "sudo $*" >> "$LOG"
exec env "$@"
"""


def _tool(bin_dir: Path, name: str, text: str) -> None:
    path = bin_dir / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("uid", ["0", "1000"])
def test_python3_venv_is_installed_when_missing(tmp_path: Path, uid: str) -> None:
    bin_dir, state, work = tmp_path / "bin", tmp_path / "state", tmp_path / "work"
    for d in (bin_dir, state, work):
        d.mkdir()
    log = tmp_path / "log"
    _tool(bin_dir, "python3", FAKE_PYTHON)
    _tool(bin_dir, "apt-get", FAKE_APT)
    _tool(bin_dir, "sudo", FAKE_SUDO)
    _tool(bin_dir, "id", f"#!/bin/sh\necho {uid}\n")
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "LOG": str(log),
        "STATE": str(state),
        "HOME": os.environ.get("HOME", "/root"),
    }
    run = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; . {ROOT / 'scripts' / 'venv.sh'}; ensure_venv"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    install = [c for c in calls if c.startswith("apt-get") and "install" in c]
    assert install and "python3-venv" in install[0], calls
    assert ("sudo apt-get install" in "\n".join(calls)) == (uid != "0"), calls
    assert "python3 -m venv --clear .venv" in calls, calls
    assert (work / ".venv" / "bin" / "python").exists()
    # Run again: venv works and .venv has pip, so nothing is installed or made again.
    log.write_text("")
    again = subprocess.run(
        ["bash", "-c", f". {ROOT / 'scripts' / 'venv.sh'}; ensure_venv"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 0, again.stderr
    assert not [c for c in log.read_text().splitlines() if "apt-get" in c or "venv --clear" in c]


def test_both_scripts_use_it() -> None:
    for name in ("up.sh", "test.sh"):
        text = (ROOT / "scripts" / name).read_text()
        assert ". scripts/venv.sh" in text and "ensure_venv" in text, name
        assert "python3 -m venv .venv" not in text, name
