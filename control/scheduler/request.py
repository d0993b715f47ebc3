"""Parsing and validating ``GET /v1/endpoint`` parameters. Pure."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NamedTuple
from urllib.parse import unquote_plus

from control.common.errors import BadRequest
from control.common.wire import MAX_UID, UID_RE
from control.gray.model import Version

DEVICE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PLATFORM_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class EndpointQuery(NamedTuple):
    uid: str
    device: str
    platform: str
    version: Version
    region: str | None


_NAMES = frozenset({"uid", "device", "platform", "version", "region"})
_VERSIONS: dict[str, Version] = {}  # clients run a few hundred app versions at most
_VERSIONS_MAX = 4096


def query_fields(raw: str) -> dict[str, str]:
    """The endpoint's parameters from a raw query string (form encoding: ``+`` is a space,
    ``%XX`` escapes). Other parameters are ignored; a repeated one is an error, since the
    client and a proxy could read different values. Hand-rolled because a general
    MultiDict parse cost as much as the whole routing decision."""
    found: dict[str, str] = {}
    for part in raw.split("&"):
        name, _, value = part.partition("=")
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if name not in _NAMES:
            continue
        if name in found:
            raise BadRequest(name, "given more than once")
        found[name] = unquote_plus(value) if "%" in value or "+" in value else value
    return found


def _version(raw: str) -> Version:
    version = _VERSIONS.get(raw)
    if version is None:
        try:
            version = Version.parse(raw)
        except ValueError:
            shown = raw if len(raw) <= 32 else raw[:32] + "..."
            raise BadRequest("version", f"{shown!r} is not a version like 1.2.3") from None
        if len(_VERSIONS) >= _VERSIONS_MAX:
            _VERSIONS.clear()
        _VERSIONS[raw] = version
    return version


def _required(q: dict[str, str], name: str) -> str:
    value = q.get(name)
    if not value:
        raise BadRequest(name, "required")
    return value


def parse_endpoint_query(raw_query: str, regions: Collection[str]) -> EndpointQuery:
    """Validate ``GET /v1/endpoint``'s parameters; BadRequest names the first bad one."""
    q = query_fields(raw_query)
    uid = _required(q, "uid")
    if len(uid) > MAX_UID:
        raise BadRequest("uid", f"at most {MAX_UID} characters, got {len(uid)}")
    if not UID_RE.fullmatch(uid):
        raise BadRequest("uid", "may hold only letters, digits and _ . : @ + = -")
    device = _required(q, "device")
    if not DEVICE_RE.fullmatch(device):
        raise BadRequest("device", "1-64 characters: letters, digits and _ . : -")
    platform = _required(q, "platform")
    # ASCII before lowering: "\u212a" (Kelvin sign) lowers to a plain "k".
    platform = platform.lower() if platform.isascii() else ""
    if not PLATFORM_RE.fullmatch(platform):
        raise BadRequest("platform", "1-32 characters: a letter, then letters, digits, _ or -")
    version = _version(_required(q, "version"))
    region = q.get("region") or None
    if region is not None and region not in regions:
        shown = region if len(region) <= 32 else region[:32] + "..."
        raise BadRequest("region", f"unknown region {shown!r}; known: {', '.join(sorted(regions))}")
    return EndpointQuery(uid, device, platform, version, region)
