"""``imctl gray ...``: gray releases for SREs, through the admin API (which holds the rules:
control/gray/verbs.py): create and apply from a release file (``--dry-run`` shows the diff
and the share of users that would move), list, status, the verbs, history and delete."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Any

import yaml

from control.cli.admin_client import AdminError
from control.cli.context import EXIT_USAGE, Verb, admin, fail, operator_verb
from control.cli.render import show, table

HISTORY_MAX = 1000  # the admin API's bound on ?limit=


def revision_number(text: str) -> int:
    """``--revision``: a store revision, a whole number from 1."""
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a revision (a whole number from 1)")
    return int(text)


def history_limit(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= HISTORY_MAX):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {HISTORY_MAX}")
    return int(text)


def _cell(value: Any) -> str:
    """A field's value in a table cell: compact JSON, ``-`` for nothing."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _target(target: Any) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(target.items())) or "-"


def _percent(value: float) -> str:
    return f"{value:g}%"


def problems_listed(verb: Verb) -> Verb:
    """A release the server refused with a list of problems (400): every problem, one a
    line, and exit 2, like ``imctl config check``."""

    @functools.wraps(verb)
    def run(args: argparse.Namespace) -> int:
        try:
            return verb(args)
        except AdminError as exc:
            answer = exc.answer if isinstance(exc.answer, dict) else {}
            problems = answer.get("problems")
            if exc.status != 400 or not isinstance(problems, list):
                raise
            where = getattr(args, "file", None) or getattr(args, "name", None) or exc.url
            if args.output == "json":
                print(json.dumps({"ok": False, "problems": problems}, indent=2))
                return EXIT_USAGE
            print(f"imctl: {where}: {answer.get('message', 'refused')}:", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return EXIT_USAGE

    return run


def read_release(path: str) -> Any:
    """The release a file holds (YAML or JSON; ``-``: stdin), as plain JSON data; the
    server checks its shape and lists every problem."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(fail(f"{path}: cannot read: {exc}", EXIT_USAGE)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise SystemExit(fail(f"{path}: not YAML{at}: {problem}", EXIT_USAGE)) from None
    if not isinstance(data, dict):
        message = f"{path}: holds one release (a mapping with name, target, percent...)"
        raise SystemExit(fail(message, EXIT_USAGE))
    # YAML's dates and the like become strings: the server says what is wrong with them.
    return json.loads(json.dumps(data, default=str))


def _release_line(answer: Any, verb: str = "") -> str:
    release = answer["release"]
    done = f"{verb}: " if verb else ""
    unchanged = "" if answer.get("changed", True) else ", unchanged"
    return (
        f"{done}release {release['name']} {release['state']} at {_percent(release['percent'])}"
        f" (revision {answer['revision']}{unchanged})"
    )


def dry_run_text(answer: Any, name: str, creating: bool) -> str:
    """A dry run for people: every changed field, and who would move."""
    changes = answer["diff"]
    moves = answer["moves"]
    head = f"dry run: release {name} would be {'created' if creating else 'changed'}"
    lines = [head + " (nothing written)", ""]
    if changes:
        rows = [[k, _cell(v[0]), _cell(v[1])] for k, v in sorted(changes.items())]
        lines.append(table(rows, ["FIELD", "BEFORE", "AFTER"]))
    else:
        lines.append("no field changes")
    lines += [
        "",
        f"moves {moves['into'] + moves['out_of']:,} of {moves['sample']:,} sampled users "
        f"({moves['share'] * 100:.2f}%): {moves['into']:,} into the release, "
        f"{moves['out_of']:,} out of it",
    ]
    return "\n".join(lines)


@operator_verb
@problems_listed
def cmd_gray_create(args: argparse.Namespace) -> int:
    release = read_release(args.file)
    answer = admin(args).gray_create(release, args.dry_run, args.reason)
    if args.dry_run:
        return show(args, answer, dry_run_text(answer, str(release.get("name")), True))
    return show(args, answer, _release_line(answer, "created"))


@operator_verb
@problems_listed
def cmd_gray_apply(args: argparse.Namespace) -> int:
    release = read_release(args.file)
    name = release.get("name")
    if not isinstance(name, str) or not name:
        return fail(f"{args.file}: name: required (the release to change)", EXIT_USAGE)
    client = admin(args)
    answer = client.gray_apply(name, release, args.dry_run, args.reason, args.revision)
    if args.dry_run:
        return show(args, answer, dry_run_text(answer, name, False))
    return show(args, answer, _release_line(answer, "applied"))


@operator_verb
def cmd_gray_list(args: argparse.Namespace) -> int:
    answer = admin(args).gray_list()
    rows = [
        [r["name"], r["state"], _percent(r["percent"]), _target(r["target"]), str(r["revision"])]
        for r in answer["releases"]
    ]
    headers = ["NAME", "STATE", "PERCENT", "TARGET", "REVISION"]
    text = table(rows, headers) if rows else "no releases"
    return show(args, answer, text)


def status_text(answer: Any) -> str:
    r, step = answer["release"], answer["step"]
    plan = ", ".join(f"{s:g}" for s in r["steps"]) or "none"
    if r["steps"] and r["state"] not in ("promoted", "rolled_back"):
        following = _percent(step["next"]) if step["next"] is not None else "none"
        plan += f" (reached {step['at']} of {step['of']}; next {following})"
    inc, exc = r["include"], r["exclude"]
    rules = [
        ("regions", ", ".join(inc["regions"])),
        ("platforms", ", ".join(inc["platforms"])),
        ("app versions", " or ".join(inc["app_versions"])),
        ("listed uids", f"{len(inc['uids'])}" if inc["uids"] else ""),
        ("excluded uids", f"{len(exc['uids'])}" if exc["uids"] else ""),
    ]
    who = "; ".join(f"{k} {v}" for k, v in rules if v) or "every user"
    rows = [
        ["target", _target(r["target"])],
        ["percent", _percent(r["percent"])],
        ["steps", plan],
        ["interval", f"{r['step_interval_s']:g}s"],
        ["who", who],
        ["salt", r["salt"] or f"{r['name']} (the name)"],
    ]
    tracks = answer.get("tracks")
    if tracks:  # an older server sends none
        for track in ("canary", "stable", "other"):
            if track != "other" or tracks[track]["nodes"]:
                rows.append([track, _track_line(tracks[track])])
    judged = answer.get("last_analysis")
    if "last_analysis" in answer:
        rows.append(["analysis", _analysis_line(judged)])
    spread = answer.get("propagation")
    if spread is not None and (spread["serving"] or spread["lagging"]):  # none: no line
        rows.append(["serving", _propagation_line(spread)])
    head = f"release {r['name']}: {r['state']} (revision {answer['revision']})"
    return head + "\n\n" + "\n".join(f"{k:<9} {v}" for k, v in rows)


def _track_line(load: Any) -> str:
    """A track's nodes, connections (load reports) and online entries (presence)."""
    online = "?" if load["online"] is None else f"{load['online']:,}"
    nodes = f"{load['nodes']} node{'s' * (load['nodes'] != 1)}"
    return f"{nodes}, {load['connections']:,} connections, {online} online"


def _analysis_line(record: Any) -> str:
    """The stepper's newest decision: when, what, why."""
    if record is None:
        return "none yet"
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record["at"]))
    verdict = record["figures"].get("verdict")
    said = f" ({verdict})" if verdict else ""
    return f"{at} {record['action']}{said}: {record['why'] or '-'}"


def _propagation_line(spread: Any) -> str:
    """Which schedulers serve the current revision, and which lag (on what)."""
    serving, lagging = spread["serving"], spread["lagging"]
    total = len(serving) + len(lagging)
    line = f"{len(serving)} of {total} schedulers on revision {spread['revision']}"
    if lagging:
        behind = ", ".join(f"{s['id']} on {s['revision'] or 'none'}" for s in lagging)
        line += f"; lagging: {behind}"
    return line


@operator_verb
def cmd_gray_status(args: argparse.Namespace) -> int:
    client = admin(args)
    answer = client.gray_status(args.name)
    try:
        spread = client.get("/v1/gray/propagation")["releases"].get(args.name)
    except AdminError:  # a server without the route: the status without that line
        spread = None
    answer = {**answer, "propagation": spread}
    return show(args, answer, status_text(answer))


def _verb(verb: str, args: argparse.Namespace, **extra: Any) -> int:
    answer = admin(args).gray_verb(args.name, verb, extra, args.reason, args.revision)
    return show(args, answer, _release_line(answer, verb))


@operator_verb
@problems_listed
def cmd_gray_set_percent(args: argparse.Namespace) -> int:
    return _verb("set-percent", args, percent=args.percent)


@operator_verb
@problems_listed
def cmd_gray_step(args: argparse.Namespace) -> int:
    return _verb("step", args)


@operator_verb
@problems_listed
def cmd_gray_pause(args: argparse.Namespace) -> int:
    return _verb("pause", args)


@operator_verb
@problems_listed
def cmd_gray_resume(args: argparse.Namespace) -> int:
    return _verb("resume", args)


@operator_verb
@problems_listed
def cmd_gray_promote(args: argparse.Namespace) -> int:
    return _verb("promote", args)


@operator_verb
@problems_listed
def cmd_gray_rollback(args: argparse.Namespace) -> int:
    return _verb("rollback", args, over_s=args.over)


def _changes(record: Any) -> str:
    """A change's fields as ``field before->after`` (a whole release created or deleted:
    none), then the figures it saw."""
    parts = []
    if record["action"] not in ("create", "delete"):
        parts = [f"{k} {_cell(b)}->{_cell(a)}" for k, (b, a) in sorted(record["changes"].items())]
    parts += [f"{k}={_cell(v)}" for k, v in sorted(record["figures"].items())]
    return ", ".join(parts) or "-"


@operator_verb
def cmd_gray_history(args: argparse.Namespace) -> int:
    answer = admin(args).gray_history(args.name, args.limit)
    rows = [
        [
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"])),
            r["action"],
            f"{r['from_revision']}->{r['revision']}",
            r["by"],
            _changes(r),
            r["why"] or "-",
        ]
        for r in answer["history"]
    ]
    headers = ["AT", "ACTION", "REVISION", "BY", "CHANGES", "WHY"]
    text = table(rows, headers) if rows else f"no history for {args.name}"
    return show(args, answer, text)


@operator_verb
def cmd_gray_delete(args: argparse.Namespace) -> int:
    answer = admin(args).gray_delete(args.name, args.reason, args.revision)
    was = answer["revision"]
    return show(args, answer, f"release {args.name} deleted (it was at revision {was})")
