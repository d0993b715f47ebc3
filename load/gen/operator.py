"""What a scenario does to the cluster while its clients run, as a timeline of steps
(``plan``, pure) carried out through the admin API or a signal (``Operator``)."""

from __future__ import annotations

import os
import signal
from typing import Any, NamedTuple

from control.cli.admin_client import AdminClient, AdminError
from load.gen.scenario import Scenario


class Step(NamedTuple):
    at_s: float
    verb: str  # kill, drain, undrain, gray-create, gray-percent, gray-rollback, gray-delete
    args: dict[str, Any]

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.args.items() if k != "release")
        return f"{self.verb} {shown}".strip()


def plan(s: Scenario) -> list[Step]:
    """The scenario's steps in time order; the clean-up ones (undrain, delete the release)
    at the start of the settle phase, so the cluster is as it was when the run ends."""
    steps: list[Step] = []
    if s.storm is not None:
        if s.storm.pid is not None:
            steps.append(Step(s.storm.at_s, "kill", {"pid": s.storm.pid}))
        else:
            steps.append(Step(s.storm.at_s, "drain", {"node": s.storm.node, "over_s": 0.0}))
            steps.append(Step(s.active_s, "undrain", {"node": s.storm.node}))
    if s.drain is not None:
        steps.append(Step(s.drain.at_s, "drain", {"node": s.drain.node, "over_s": s.drain.over_s}))
        if s.drain.undrain:
            steps.append(Step(s.active_s, "undrain", {"node": s.drain.node}))
    if s.gray is not None:
        g = s.gray
        name = str(g.release["name"])
        release = {**g.release, "percent": 0}
        steps.append(Step(g.at_s, "gray-create", {"name": name, "release": release}))
        for i, p in enumerate(g.percents, start=1):
            steps.append(Step(g.at_s + g.every_s * i, "gray-percent", {"name": name, "percent": p}))
        steps.append(
            Step(g.rollback_at_s, "gray-rollback", {"name": name, "over_s": g.rollback_over_s})
        )
        steps.append(Step(s.active_s, "gray-delete", {"name": name}))
    return sorted(steps, key=lambda st: st.at_s)


class Done(NamedTuple):
    at_s: float  # when it was carried out
    step: Step
    outcome: str  # "ok" or the error's line


class Operator:
    """Carries out the plan's steps as they fall due; ``done`` holds what happened."""

    def __init__(self, admin: AdminClient, steps: list[Step]) -> None:
        self.admin = admin
        self.pending = list(steps)
        self.done: list[Done] = []

    def run_once(self, now_s: float) -> list[Done]:
        """Every step due by ``now_s`` (seconds into the run), in order."""
        out = []
        while self.pending and self.pending[0].at_s <= now_s:
            step = self.pending.pop(0)
            try:
                self._do(step)
                outcome = "ok"
            except AdminError as exc:
                outcome = str(exc)
            except OSError as exc:
                outcome = f"{step.verb}: {exc}"
            out.append(Done(now_s, step, outcome))
        self.done.extend(out)
        return out

    def finish(self, now_s: float) -> list[Done]:
        """The clean-up steps not yet due (a run cut short): carried out now."""
        cleanup = {"undrain", "gray-delete"}
        self.pending = [st._replace(at_s=now_s) for st in self.pending if st.verb in cleanup]
        return self.run_once(now_s)

    def _do(self, step: Step) -> None:
        a = step.args
        if step.verb == "kill":
            os.kill(int(a["pid"]), signal.SIGKILL)
        elif step.verb == "drain":
            self.admin.drain(a["node"], a["over_s"])
        elif step.verb == "undrain":
            self.admin.undrain(a["node"])
        elif step.verb == "gray-create":
            self.admin.gray_create(a["release"], False, "imctl load")
        elif step.verb == "gray-percent":
            self.admin.gray_verb(
                a["name"], "set-percent", {"percent": a["percent"]}, "imctl load", None
            )
        elif step.verb == "gray-rollback":
            self.admin.gray_verb(a["name"], "rollback", {"over_s": a["over_s"]}, "imctl load", None)
        elif step.verb == "gray-delete":
            self.admin.gray_delete(a["name"], "imctl load", None)
        else:
            raise AssertionError(f"unknown step {step.verb}")
