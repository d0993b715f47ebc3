"""The SRE verbs on a release, as pure transitions: a stored release and a verb's arguments
in, the next release (and the figures its audit record keeps) out, or a refusal saying why.
The admin API (control/admin/gray.py) reads, calls these and writes with a compare-and-swap;
the CLI and the API share these rules because only the API applies them.

States: ``draft`` routes nobody yet; ``running`` and ``paused`` route (paused only stops the
step controller); ``promoted`` and ``rolled_back`` are ended: every change is refused except
delete. ``apply`` and ``create`` never end a release: that is what promote and rollback
are for (rollback's drain and promote's hand-over are theirs to start).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from control.common.errors import FatalError
from control.common.registry import DRAIN_DEFAULT_S, DRAIN_MAX_S, drain_window
from control.gray.model import Release

VERBS = ("set-percent", "step", "pause", "resume", "promote", "rollback")
# The arguments each verb takes (besides "revision" and "reason", which every change takes).
VERB_ARGS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "set-percent": frozenset({"percent"}),
        "step": frozenset(),
        "pause": frozenset(),
        "resume": frozenset(),
        "promote": frozenset(),
        "rollback": frozenset({"over_s"}),
    }
)
ENDED = frozenset({"promoted", "rolled_back"})
PAUSABLE = frozenset({"running", "paused"})
ROLLBACK_DEFAULT_S = DRAIN_DEFAULT_S  # a rollback drains like a node drain, by default as long
_EPSILON = 1e-6  # percent comparisons: 0.01 steps, stored as floats


class VerbRefused(FatalError):
    """A verb or a release that must not be written: ``status`` 400 (bad input; every
    problem in ``problems``), 404 (no such verb) or 409 (the release's state forbids it)."""

    def __init__(
        self, status: int, code: str, message: str, problems: tuple[str, ...] = (), **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.problems = problems
        self.extra = extra


@dataclass(frozen=True)
class Transition:
    """What a verb makes of a release: the next release, and the numbers the audit keeps."""

    action: str
    release: Release
    figures: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


def _bad(*problems: str) -> VerbRefused:
    return VerbRefused(400, "bad_request", "; ".join(problems), problems)


def _ended(release: Release, doing: str) -> VerbRefused:
    return VerbRefused(
        409,
        "release_ended",
        f"release {release.name} is {release.state}: it takes no more changes ({doing}); "
        "delete it, or create a new release",
        state=release.state,
    )


def percent_of(value: Any) -> float:
    """A percent argument: 0..100 in 0.01 steps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"percent: a number from 0 to 100, not {value!r}")
    if not 0 <= value <= 100:
        raise _bad(f"percent: must be within 0..100, got {value}")
    if abs(value * 100 - round(value * 100)) > _EPSILON:
        raise _bad(f"percent: granularity is 0.01, got {value}")
    return round(float(value), 2)


def rollback_window(value: Any) -> float:
    """A rollback's ``over_s``: how long its connections take to leave, 0..86400 s."""
    over = drain_window(value)
    if over is None:
        raise _bad(f"over_s: seconds between 0 and {DRAIN_MAX_S}, not {value!r}")
    return over


def next_step(release: Release) -> float | None:
    """The first value of ``steps`` above the current percent; None when there is none."""
    return next((s for s in release.steps if s > release.percent + _EPSILON), None)


def step_position(release: Release) -> Mapping[str, Any]:
    """Where the release is in its step plan: steps reached, of how many, and the next."""
    reached = sum(1 for s in release.steps if s <= release.percent + _EPSILON)
    return {"at": reached, "of": len(release.steps), "next": next_step(release)}


def transition(current: Release, verb: str, args: Mapping[str, Any]) -> Transition:
    """The release ``verb`` makes of ``current``; VerbRefused when it may not."""
    allowed = VERB_ARGS.get(verb)
    if allowed is None:
        raise VerbRefused(404, "not_found", f"no verb {verb!r} (one of: {', '.join(VERBS)})")
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise _bad(*(f"{k}: unknown field for {verb}" for k in unknown))
    if current.state in ENDED:
        raise _ended(current, verb)
    replace = dataclasses.replace
    if verb == "set-percent":
        if "percent" not in args:
            raise _bad("percent: required")
        return Transition(verb, replace(current, percent=percent_of(args["percent"])))
    if verb == "step":
        if not current.steps:
            raise _bad(f"release {current.name} has no steps to take")
        step = next_step(current)
        if step is None:
            raise _bad(
                f"release {current.name} is at {current.percent:g}%: no step above it in "
                f"{[float(s) for s in current.steps]} (promote it, or set the percent)"
            )
        return Transition(verb, replace(current, percent=step))
    if verb in ("pause", "resume"):
        if current.state not in PAUSABLE:
            raise VerbRefused(
                409,
                "wrong_state",
                f"release {current.name} is {current.state}: {verb} applies to a running or "
                "paused release",
                state=current.state,
            )
        return Transition(verb, replace(current, state="paused" if verb == "pause" else "running"))
    if verb == "promote":
        return Transition(verb, replace(current, percent=100.0, state="promoted"))
    over = rollback_window(args.get("over_s", ROLLBACK_DEFAULT_S))
    # The release carries the window: every node holding its clients spreads their
    # reconnect frames over it (control/access/follow.py); the audit keeps it too.
    back = replace(current, percent=0.0, state="rolled_back", rollback_over_s=over)
    return Transition(verb, back, MappingProxyType({"over_s": over}))


def check_create(new: Release) -> None:
    """A new release may start as a draft, running or paused, never ended."""
    if new.state in ENDED:
        raise _bad(f"release.state: a release cannot be created {new.state}")


def check_apply(current: Release, new: Release) -> None:
    """``apply`` replaces a release's rules; it cannot revive an ended release, nor end one
    (promote and rollback do that, and start what follows)."""
    if current.state in ENDED:
        raise _ended(current, "apply")
    if new.name != current.name:
        raise _bad(f"release.name: {new.name!r} is not {current.name!r} (names do not change)")
    if new.state in ENDED:
        verb = "promote" if new.state == "promoted" else "rollback"
        raise _bad(f"release.state: {new.state} is reached with imctl gray {verb}, not apply")
