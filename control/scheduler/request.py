"""Parsing and validating ``GET /v1/endpoint`` parameters. Pure."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from multidict import MultiMapping

from control.common.errors import BadRequest
from control.gray.model import Version

MAX_UID = 128
UID_RE = re.compile(r"[A-Za-z0-9_.:@+=-]{1,128}")
DEVICE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PLATFORM_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True, slots=True)
class EndpointQuery:
    uid: str
    device: str
    platform: str
    version: Version
    region: str | None


_NAMES = ("uid", "device", "platform", "version", "region")


def _one(query: MultiMapping[str], name: str, required: bool = True) -> str | None:
    value = query.get(name)
    if not value:
        if required:
            raise BadRequest(name, "required")
        return None
    return value


def parse_endpoint_query(query: MultiMapping[str], regions: Collection[str]) -> EndpointQuery:
    if len(query) != len(set(query)):  # rare: find which parameter repeats
        for name in _NAMES:
            if len(query.getall(name, ())) > 1:
                raise BadRequest(name, "given more than once")
    uid = _one(query, "uid") or ""
    if len(uid) > MAX_UID:
        raise BadRequest("uid", f"at most {MAX_UID} characters, got {len(uid)}")
    if not UID_RE.fullmatch(uid):
        raise BadRequest("uid", "may hold only letters, digits and _ . : @ + = -")
    device = _one(query, "device") or ""
    if not DEVICE_RE.fullmatch(device):
        raise BadRequest("device", "1-64 characters: letters, digits and _ . : -")
    platform = (_one(query, "platform") or "").lower()
    if not PLATFORM_RE.fullmatch(platform):
        raise BadRequest("platform", "1-32 characters: a letter, then letters, digits, _ or -")
    raw_version = _one(query, "version") or ""
    try:
        version = Version.parse(raw_version)
    except ValueError:
        shown = raw_version if len(raw_version) <= 32 else raw_version[:32] + "..."
        raise BadRequest("version", f"{shown!r} is not a version like 1.2.3") from None
    region = _one(query, "region", required=False)
    if region is not None and region not in regions:
        shown = region if len(region) <= 32 else region[:32] + "..."
        raise BadRequest("region", f"unknown region {shown!r}; known: {', '.join(sorted(regions))}")
    return EndpointQuery(uid, device, platform, version, region)
