"""Who logs out when: each client's sessions end at exponentially spread moments (a Poisson
process per client whose rates add up to the population's ``logouts_per_s``), and it logs
in again ``off_s`` later. Deterministic for a seed and a client index; pure."""

from __future__ import annotations

import random
from typing import NamedTuple


class Logout(NamedTuple):
    at_s: float  # seconds from the run's start
    back_s: float  # when it logs in again


def schedule(
    index: int,
    clients: int,
    logouts_per_s: float,
    off_s: float,
    start_s: float,
    stop_s: float,
    seed: int,
) -> list[Logout]:
    """Client ``index``'s logouts after ``start_s`` (its first login), each back before
    ``stop_s`` (the settle phase: nobody is out then). Bounded: at most the expected count
    many times over."""
    if logouts_per_s <= 0 or clients <= 0 or stop_s <= start_s:
        return []
    rate = logouts_per_s / clients  # this client's logouts per second
    rng = random.Random(f"{seed}:{index}")
    out: list[Logout] = []
    t = start_s
    limit = 10 + int(10 * rate * (stop_s - start_s))
    while len(out) < limit:
        t += rng.expovariate(rate)
        if t + off_s >= stop_s:
            break
        out.append(Logout(t, t + off_s))
        t += off_s
    return out


def first_login(index: int, clients: int, ramp_s: float) -> float:
    """When client ``index`` first asks: spread evenly over the ramp."""
    return ramp_s * index / clients if clients else 0.0
