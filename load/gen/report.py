"""The report of a run: ``report.md`` with the numbers, ``summary.json`` with the same for
scripts and tests, and PNG pictures beside them (matplotlib, Agg: no display needed)."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from load.gen.operator import Done
from load.gen.run import Result
from load.gen.stats import LATENCIES, Timeline

PERCENTILES = (50.0, 90.0, 99.0)
LATENCY_WINDOW_S = 5  # seconds per point of the latency picture


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def summary(r: Result) -> dict[str, Any]:
    """The run's numbers as plain data."""
    s = r.scenario
    total = r.timeline.total()
    per_s = [w.counts["handshakes"] for w in r.timeline.seconds]
    out: dict[str, Any] = {
        "scenario": s.kind,
        "server": s.server,
        "clients": s.clients,
        "workers": s.worker_count,
        "duration_s": s.duration_s,
        "wall_s": round(r.wall_s, 1),
        "online_end": r.online_end,
        "presence_end": r.presence_end,
        "presence_by_node": r.presence_by_node,
        "clients_lost": s.clients - r.online_end,
        "gave_up": r.gave_up,
        "counts": dict(total.counts),
        "failures": dict(total.failures),
        "reconnects": dict(total.reconnects),
        "handshakes_per_s_peak": max(per_s, default=0),
        "latency_ms": {
            name: {f"p{p:g}": total.latency[name].percentile(p) for p in PERCENTILES}
            | {"count": total.latency[name].count}
            for name in LATENCIES
        },
        "steps": [
            {"at_s": round(d.at_s, 1), "step": d.step.describe(), "outcome": d.outcome}
            for d in r.done
        ],
        # Second by second (the gauges as of each second's end), for scripts and tests.
        "seconds": [
            {
                "online": w.online,
                "by_node": dict(w.by_node),
                "handshakes": w.counts["handshakes"],
                "failures": w.counts["handshake_failures"] + w.counts["ask_failures"],
                "reconnects": dict(w.reconnects),
            }
            for w in r.timeline.seconds
        ],
    }
    if s.storm is not None:
        # The operator acts on the run's second ticks: a step due at 2.5 s runs at the 3rd;
        # the tick that carried the kill out, from its own moment when it ran.
        kill = next((d.at_s for d in r.done if d.step.verb in ("kill", "drain")), None)
        tick = math.ceil(s.storm.at_s) if kill is None else math.floor(kill)
        out["storm"] = storm_figures(r.timeline, tick)
    rollback = next((d.at_s for d in r.done if d.step.verb == "gray-rollback"), None)
    if s.gray is not None and rollback is not None:
        out["gray"] = gray_figures(r.timeline, math.floor(rollback))
    return out


def preload() -> None:
    """Import matplotlib in a thread while the run goes (a second or more under load),
    so the report is written soon after the run ends."""

    def load() -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot

    threading.Thread(target=load, name="report-preload", daemon=True).start()


def storm_figures(t: Timeline, k: int) -> dict[str, Any]:
    """The reconnect storm after a kill carried out at the run's ``k``-th second tick:
    connected just before (the second sealed at that tick), the lowest count after, and
    the seconds until every client that was connected is again."""
    last = t.seconds[k - 1] if 0 < k <= len(t.seconds) else None
    before = last.online if last else 0
    after = t.seconds[k:]
    lowest = min((w.online for w in after), default=before)
    # Back: connected as many as before the kill again (the lost ones came back elsewhere),
    # in whole seconds from the kill's tick to the end of the second that saw it.
    back = next((i + 1 for i, w in enumerate(after) if w.online >= before), None)
    storm = Counter[str]()
    for w in after:
        storm.update(w.reconnects)
    return {
        "online_before": before,
        "by_node_before": dict(last.by_node) if last else {},
        "online_lowest": lowest,
        "recovered_after_s": back,
        "reconnects": dict(storm),
        "handshakes_per_s_peak": max((w.counts["handshakes"] for w in after), default=0),
    }


def gray_figures(t: Timeline, k: int) -> dict[str, Any]:
    """A release rolled back at the run's ``k``-th second tick: who was where just before
    (the canary's clients among them), and the connections moved before and after it, by
    the reason their ``reconnect`` frame gave."""
    before, after = Counter[str](), Counter[str]()
    for i, w in enumerate(t.seconds):
        (before if i < k else after).update(w.reconnects)
    last = t.seconds[k - 1] if 0 < k <= len(t.seconds) else None
    return {
        "by_node_before_rollback": dict(last.by_node) if last else {},
        "moved_before_rollback": dict(before),
        "moved_after_rollback": dict(after),
    }


def write(r: Result, directory: Path) -> Path:
    """Write the report into ``directory``; the path of report.md."""
    directory.mkdir(parents=True, exist_ok=True)
    data = summary(r)
    (directory / "summary.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    pictures = _pictures(r, directory)
    md = directory / "report.md"
    md.write_text(_markdown(r, data, pictures))
    return md


def _markdown(r: Result, d: dict[str, Any], pictures: list[tuple[str, str]]) -> str:
    s = r.scenario
    lines = [
        f"# Load run: {s.kind}, {s.clients:,} clients",
        "",
        f"Scheduler {s.server}; {d['workers']} worker process(es); {s.duration_s:g} s "
        f"(ramp {s.ramp_s:g} s, settle {s.settle_s:g} s); a message every "
        f"{s.message_interval_s:g} s per client; churn {s.logouts_per_s:g} logouts/s. "
        f"Wall time {d['wall_s']} s.",
        "",
        "## Clients",
        "",
        "| | |",
        "|---|---|",
        f"| connected at the end (generator) | {d['online_end']:,} of {s.clients:,} |",
        f"| online at the end (cluster presence count) | "
        f"{'-' if d['presence_end'] is None else format(d['presence_end'], ',')} |",
        f"| clients lost | {d['clients_lost']:,} |",
        f"| gave up (credential refused) | {sum(d['gave_up'].values()):,} |",
        f"| kicked | {d['counts'].get('kicked', 0):,} |",
        f"| logouts (churn) | {d['counts'].get('logouts', 0):,} |",
        "",
        "## Scheduler and handshakes",
        "",
        "| | count | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    names = {
        "endpoint": "GET /v1/endpoint",
        "handshake": "WebSocket open to welcome",
        "message": "msg round trip (send to ack)",
    }
    for name in LATENCIES:
        lat = d["latency_ms"][name]
        lines.append(
            f"| {names[name]} | {lat['count']:,} | {_ms(lat['p50'])} | {_ms(lat['p90'])} | "
            f"{_ms(lat['p99'])} |"
        )
    c = d["counts"]
    lines += [
        "",
        f"Asks answered {c.get('asks', 0):,}, failed {c.get('ask_failures', 0):,}; handshakes "
        f"{c.get('handshakes', 0):,}, failed {c.get('handshake_failures', 0):,}, peak "
        f"{d['handshakes_per_s_peak']:,}/s. Messages sent {c.get('sent', 0):,}, acked "
        f"{c.get('acked', 0):,}, delivered {c.get('received', 0):,}.",
        "",
        *_table(("failure", "count"), d["failures"], "No ask or handshake failed."),
        "## Reconnects by reason",
        "",
        *_table(("reason", "count"), d["reconnects"], "No client was told to reconnect or lost."),
    ]
    if "storm" in d:
        st = d["storm"]
        back = st["recovered_after_s"]
        lines += [
            "## Reconnect storm",
            "",
            f"Connected before the kill {st['online_before']:,} ({st['by_node_before']}), "
            f"lowest after "
            f"{st['online_lowest']:,}, every client back "
            f"{'never within the run' if back is None else f'after {back} s'}; reconnects "
            f"after it {st['reconnects']}; peak {st['handshakes_per_s_peak']:,} handshakes/s.",
            "",
        ]
    if "gray" in d:
        g = d["gray"]
        lines += [
            "## Gray release",
            "",
            f"Connected by node just before the rollback {g['by_node_before_rollback']}; "
            f"connections moved before it {g['moved_before_rollback'] or 'none'}, after it "
            f"{g['moved_after_rollback'] or 'none'} (by the reason of their reconnect frame).",
            "",
        ]
    if d["steps"]:
        lines += ["## Operator steps", "", "| at s | step | outcome |", "|---|---|---|"]
        lines += [f"| {x['at_s']} | {x['step']} | {x['outcome']} |" for x in d["steps"]]
        lines.append("")
    lines += ["## Pictures", ""]
    lines += [f"![{title}]({name})" for name, title in pictures]
    lines.append("")
    return "\n".join(lines)


def _table(head: tuple[str, str], counts: dict[str, int], none: str) -> list[str]:
    if not counts:
        return [none, ""]
    rows = [f"| {k} | {v:,} |" for k, v in sorted(counts.items())]
    return [f"| {head[0]} | {head[1]} |", "|---|---|", *rows, ""]


def _pictures(r: Result, directory: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[tuple[str, str]] = []
    seconds = list(range(len(r.timeline.seconds)))

    fig, ax = plt.subplots(figsize=(8, 4))
    nodes = sorted({n for row in r.node_conns for n in row})
    for n in nodes:
        ax.plot(range(len(r.node_conns)), [row.get(n, 0) for row in r.node_conns], label=n)
    ax.plot(seconds, [w.online for w in r.timeline.seconds], "k--", label="generator: connected")
    _marks(ax, r.done)
    ax.set(xlabel="s", ylabel="connections", title="Connections per node (GET /v1/nodes)")
    ax.legend(fontsize="small")
    out.append(_save(fig, directory, "connections.png", "connections per node"))

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(seconds, [w.counts["handshakes"] for w in r.timeline.seconds], label="handshakes/s")
    ax.plot(
        seconds,
        [w.counts["handshake_failures"] + w.counts["ask_failures"] for w in r.timeline.seconds],
        label="failures/s (asks + handshakes)",
    )
    ax.plot(seconds, [sum(w.reconnects.values()) for w in r.timeline.seconds], label="reconnects/s")
    _marks(ax, r.done)
    ax.set(xlabel="s", ylabel="per second", title="Handshakes per second")
    ax.legend(fontsize="small")
    out.append(_save(fig, directory, "handshakes.png", "handshakes per second"))

    fig, axes = plt.subplots(1, len(LATENCIES), figsize=(12, 4))
    for ax, name in zip(axes, LATENCIES, strict=True):
        points = r.timeline.percentiles_over(name, LATENCY_WINDOW_S, PERCENTILES)
        for p in PERCENTILES:
            ax.plot([x for x, _ in points], [v[p] for _, v in points], label=f"p{p:g}")
        ax.set(xlabel="s", ylabel="ms", title=name, yscale="log")
        ax.legend(fontsize="small")
    fig.suptitle(f"Latency percentiles over {LATENCY_WINDOW_S} s windows")
    out.append(_save(fig, directory, "latency.png", "latency percentiles over time"))
    return out


def _marks(ax: Any, done: list[Done]) -> None:
    for d in done:
        ax.axvline(d.at_s, color="grey", linestyle=":", linewidth=1)
        ax.annotate(d.step.verb, (d.at_s, 0), fontsize="x-small", rotation=90, va="bottom")


def _save(fig: Any, directory: Path, name: str, title: str) -> tuple[str, str]:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=80)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name, title
