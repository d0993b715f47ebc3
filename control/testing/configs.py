"""imctl configs for a test: the packaged local config on free ports, sections merged over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from control.testing.ports import free_port
from control.testing.processes import ROOT


def merge_sections(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``over``'s sections merged in, one level deep."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def local_config(path: Path, **sections: Any) -> dict[str, Any]:
    """The packaged configs/local.yaml with every listener moved to a free port and
    ``sections`` merged over it one level deep, written to ``path``; returns what it wrote."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    for node in config["access"]["nodes"]:
        node["port"] = free_port()
    config["scheduler"]["port"] = free_port()
    config["controller"]["port"] = free_port()
    config = merge_sections(config, sections)
    path.write_text(yaml.safe_dump(config))
    return config
