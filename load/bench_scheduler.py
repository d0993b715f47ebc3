"""Scheduler throughput: ``GET /v1/endpoint`` with 1,000 nodes in 4 regions and 10 running
releases, against a bare aiohttp JSON handler, both measured in the same run by wrk.

    python -m load.bench_scheduler [--runs 5] [--duration 8] [--connections 16]

``imctl`` is the scheduler taking ``uid=`` on trust (``client_auth.mode: trust``, the figure
of the earlier sessions); ``auth_new`` and ``auth_repeat`` are a second scheduler process
with client authentication on (HS256 JWTs), every request with a token it has not seen
(a signature check each) and with 1,000 tokens over and over (a reconnect storm: the
verified-credential cache answers).

Each server is its own process (one core of the two), wrk runs with one thread on loopback;
runs alternate between the servers and the medians are reported. A third server, the
scheduler with its decision taken out (``load/answerless_scheduler.py``), splits imctl's
cost per request into aiohttp's path through the scheduler's app and the decision.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from control.launch import scheduler_config as config_of
from control.scheduler.service import build_engine
from control.settings import parse_settings
from control.testing import free_port, spawn_imctl, wait_port

REGIONS = ["r1", "r2", "r3", "r4"]
LUA = """
math.randomseed(os.time())
local regions = {"r1", "r2", "r3", "r4"}
local platforms = {"ios", "android", "web"}
request = function()
  local uid = "u" .. math.random(1, 10000000)
  local path = "/v1/endpoint?uid=" .. uid .. "&device=d1&platform=" ..
    platforms[math.random(1, 3)] .. "&version=5." .. math.random(0, 9) .. ".0&region=" ..
    regions[math.random(1, 4)]
  return wrk.format("GET", path)
end
"""


AUTH_KEY = "bench-client-key-0123456789abcdef-not-secret"
REPEATING_TOKENS = 1000
# Read by wrk at start: one "uid token" a line, used in turn (wrapping at the end).
AUTH_LUA = """
math.randomseed(os.time())
local regions = {"r1", "r2", "r3", "r4"}
local platforms = {"ios", "android", "web"}
local uids, tokens = {}, {}
for line in io.lines("%s") do
  local uid, token = line:match("^(%%S+) (%%S+)$")
  uids[#uids + 1] = uid
  tokens[#tokens + 1] = "Bearer " .. token
end
local i = 0
request = function()
  i = i + 1
  if i > #uids then i = 1 end
  local path = "/v1/endpoint?uid=" .. uids[i] .. "&device=d1&platform=" ..
    platforms[math.random(1, 3)] .. "&version=5." .. math.random(0, 9) .. ".0&region=" ..
    regions[math.random(1, 4)]
  return wrk.format("GET", path, {["Authorization"] = tokens[i]})
end
"""


def token_script(tmp: Path, name: str, count: int, start: int) -> Path:
    """A wrk script presenting ``count`` distinct tokens (uids u<start>...) in turn."""
    from control.common.client_auth import mint

    tokens = tmp / f"{name}.tokens"
    with tokens.open("w") as f:
        for i in range(start, start + count):
            uid = f"u{i}"
            f.write(f"{uid} {mint(uid, AUTH_KEY, 'bench', 3600, audience='imctl')}\n")
    script = tmp / f"{name}.lua"
    script.write_text(AUTH_LUA % tokens)
    return script


def scheduler_config(port: int, auth: bool = False) -> dict:  # type: ignore[type-arg]
    nodes = []
    for i in range(1000):
        region = REGIONS[i % 4]
        nodes.append(
            {
                "id": f"node-{i:04d}",
                "endpoint": f"ws://10.0.{i // 250}.{i % 250}:9000/ws",
                "region": region,
                "zone": f"{region}-z{i % 3}",
                "pool": "canary" if i % 50 == 0 else "default",
                "version": f"2.{i % 10}" if i % 50 == 0 else "1.0",
                "capacity": 1_000_000_000,
            }
        )
    releases = [
        {
            "name": f"rel-{k}",
            "target": {"version": f"2.{k}"},
            "percent": 1 + k,
            "include": {"platforms": ["ios", "android"], "app_versions": [">=5.0,<6"]},
            "exclude": {"uids": [f"vip-{j}" for j in range(100)]},
            "state": "running",
        }
        for k in range(10)
    ]
    return {
        "cluster": {"name": "bench"},
        "regions": {
            "known": REGIONS,
            "preference": {r: [r] + [o for o in REGIONS if o != r] for r in REGIONS},
        },
        "registry": {"static_nodes": nodes},
        "scheduler": {"port": port, "rate_limit": {"rate_per_s": 1e9, "burst": 1e9}},
        # wrk's keep-alive connections all come from 127.0.0.1.
        "connections": {"max_pending": 20_000, "max_pending_per_address": 20_000},
        "gray": {"releases": releases},
        "client_auth": (
            {"mode": "jwt", "keys": {"bench": AUTH_KEY}, "audience": "imctl"}
            if auth
            else {"mode": "trust"}
        ),
        "log_level": "warning",
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, duration: int, connections: int, script: Path, server_pid: int
) -> dict[str, float]:
    """One wrk run; also the server's CPU time per request (its cost, whatever else the
    machine was doing during the run)."""
    before = cpu_seconds(server_pid)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spent = cpu_seconds(server_pid) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": float(requests),
        "rps": rps,
        "cpu_us_per_request": round(spent / max(requests, 1) * 1e6, 1),
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def rebuild_ms(port: int, repeats: int = 20) -> float:
    """One snapshot rebuild of the same 1,000 nodes and 10 releases, in process: with nodes
    reporting load every few seconds a scheduler rebuilds many times a second, and a
    rebuild holds the event loop (so it adds to every waiting request's latency)."""
    engine = build_engine(config_of(parse_settings(scheduler_config(port))))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        engine.rebuild()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument(
        "--new-tokens",
        type=int,
        default=60_000,
        help="distinct tokens per auth_new run (more than it asks for: none repeats)",
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="imctl-bench-"))
    script = tmp / "req.lua"
    script.write_text(LUA)
    sport, bport = free_port(), free_port()
    cfg = tmp / "bench.yaml"
    cfg.write_text(yaml.safe_dump(scheduler_config(sport)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sched = spawn_imctl(["scheduler", "--config", str(cfg)], stderr=subprocess.DEVNULL)
    bare = subprocess.Popen([sys.executable, "-m", "load.bare_server", str(bport)], env=env)
    aport = free_port()
    acfg = tmp / "answerless.yaml"
    acfg.write_text(yaml.safe_dump(scheduler_config(aport)))
    answerless = subprocess.Popen(
        [sys.executable, "-m", "load.answerless_scheduler", str(acfg)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    xport = free_port()
    xcfg = tmp / "auth.yaml"
    xcfg.write_text(yaml.safe_dump(scheduler_config(xport, auth=True)))
    authed = spawn_imctl(["scheduler", "--config", str(xcfg)], stderr=subprocess.DEVNULL)
    repeat_script = token_script(tmp, "repeat", REPEATING_TOKENS, 10_000_000)
    servers = {
        "bare": (bport, bare),
        "imctl": (sport, sched),
        "answerless": (aport, answerless),
        "auth_new": (xport, authed),
        "auth_repeat": (xport, authed),
    }
    try:
        for port, _ in servers.values():
            wait_port(port, 30)
        time.sleep(0.5)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for run in range(args.runs):
            # Tokens the auth server has never seen, a fresh set each run.
            new_script = token_script(tmp, f"new{run}", args.new_tokens, run * args.new_tokens)
            scripts = {"auth_new": new_script, "auth_repeat": repeat_script}
            for name, (port, proc) in servers.items():
                one = wrk(
                    f"http://127.0.0.1:{port}",
                    args.duration,
                    args.connections,
                    scripts.get(name, script),
                    proc.pid,
                )
                if name == "auth_new":
                    one["requests_over_tokens"] = round(one["requests"] / args.new_tokens, 3)
                results[name].append(one)
    finally:
        for p in {id(p): p for _, p in servers.values()}.values():
            p.terminate()
            p.wait(10)
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(
        json.dumps(
            {
                "nodes": 1000,
                "regions": 4,
                "running_releases": 10,
                "connections": args.connections,
                "duration_s": args.duration,
                "runs": args.runs,
                "median": med,
                "snapshot_rebuild_ms": rebuild_ms(sport),
                "ratio_rps": round(med["imctl"]["rps"] / med["bare"]["rps"], 3),
                # Each imctl run over the bare run just before it: robust to the machine's
                # speed drifting between minutes, which the medians above are not.
                "median_pair_ratio": round(
                    statistics.median(
                        i["rps"] / b["rps"]
                        for i, b in zip(results["imctl"], results["bare"], strict=True)
                    ),
                    3,
                ),
                # Server CPU per request, bare over imctl: how many of the bare handler's
                # requests one core serves per request of ours.
                "ratio_cpu": round(
                    med["bare"]["cpu_us_per_request"] / med["imctl"]["cpu_us_per_request"], 3
                ),
                # imctl's CPU per request beyond aiohttp's path through the same app, and
                # what it may cost for imctl to reach 70 % of the bare handler's rate.
                "decision_cpu_us": round(
                    med["imctl"]["cpu_us_per_request"] - med["answerless"]["cpu_us_per_request"], 1
                ),
                "decision_budget_cpu_us_at_0.70": round(
                    med["bare"]["cpu_us_per_request"] / 0.7
                    - med["answerless"]["cpu_us_per_request"],
                    1,
                ),
                # Client authentication, against the trusting scheduler in the same runs.
                "auth_new_over_imctl_rps": round(med["auth_new"]["rps"] / med["imctl"]["rps"], 3),
                "auth_repeat_over_imctl_rps": round(
                    med["auth_repeat"]["rps"] / med["imctl"]["rps"], 3
                ),
                "auth_new_cpu_us_extra": round(
                    med["auth_new"]["cpu_us_per_request"] - med["imctl"]["cpu_us_per_request"], 1
                ),
                "auth_repeat_cpu_us_extra": round(
                    med["auth_repeat"]["cpu_us_per_request"] - med["imctl"]["cpu_us_per_request"],
                    1,
                ),
                "all_runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
