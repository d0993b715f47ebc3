"""Status cluster ring balance: how evenly the ring spreads users over its shards, and
how many a resize moves, at several virtual-node counts.

    python -m load.ring_balance [--users 200000] [--vnodes 40 160 640] [--output json]

For each ring (4 and 5 equal shards, and a weighted one: weights 1, 1, 2, 4) it places
``--users`` uids (``user-<n>``, as a deployment's ids would hash) and prints the balance:
max / mean of users per shard over their weight share (1.00 is perfect), and the same
from the exact share of the md5 space each shard owns. Then the share of users a 4 -> 5
resize moves, measured and exact, against the ideal 1/5 (the new shard's weight share).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

from control.presence.ring import HASH_SPACE, Ring, RingSpec, ShardSpec, moved_share

RINGS: dict[str, tuple[int, ...]] = {"4 equal": (1, 1, 1, 1), "5 equal": (1, 1, 1, 1, 1)}
RINGS["weighted 1,1,2,4"] = (1, 1, 2, 4)


def ring_of(weights: Sequence[int], vnodes: int) -> Ring:
    shards = tuple(ShardSpec(f"s{i}", f"embedded:s{i}", w) for i, w in enumerate(weights))
    return Ring(RingSpec(1, shards, vnodes=vnodes))


def hash_shares(ring: Ring) -> dict[str, float]:
    """The exact share of the md5 space each shard owns (arcs between continuum points)."""
    points = ring._points
    shares: Counter[str] = Counter()
    for start, end in pairwise(points):
        shares[ring._owner_at(start)] += end - start
    shares[ring._owner_at(0)] += HASH_SPACE - points[-1] + points[0]
    return {sid: n / HASH_SPACE for sid, n in shares.items()}


def balance(counts: dict[str, float], weights: Sequence[int]) -> float:
    """max over shards of (its share / its weight's share): 1.0 is a perfect spread."""
    total_w, total = sum(weights), sum(counts.values())
    return max(counts.get(f"s{i}", 0) / total / (w / total_w) for i, w in enumerate(weights))


def measure(users: int, vnodes_list: Sequence[int]) -> dict[str, object]:
    uids = [f"user-{n}" for n in range(users)]
    rows = []
    for vnodes in vnodes_list:
        for name, weights in RINGS.items():
            ring = ring_of(weights, vnodes)
            placed = Counter(ring.owner(u) for u in uids)
            rows.append(
                {
                    "ring": name,
                    "vnodes": vnodes,
                    "users_max_over_mean": round(balance(dict(placed), weights), 3),
                    "hash_max_over_mean": round(balance(hash_shares(ring), weights), 3),
                }
            )
        four, five = ring_of((1,) * 4, vnodes), ring_of((1,) * 5, vnodes)
        moved = sum(four.owner(u) != five.owner(u) for u in uids) / users
        rows.append(
            {
                "ring": "4 -> 5 moved",
                "vnodes": vnodes,
                "moved_users": round(moved, 4),
                "moved_hash": round(moved_share(four, five), 4),
                "over_ideal": round(moved / 0.2, 3),
            }
        )
    return {"users": users, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--vnodes", type=int, nargs="+", default=[40, 160, 640])
    ap.add_argument("--output", choices=["text", "json"], default="text")
    args = ap.parse_args()
    result = measure(args.users, args.vnodes)
    if args.output == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"{args.users} users; balance = max over shards of (share / weight share)")
    for row in result["rows"]:  # type: ignore[attr-defined]
        if "moved_users" in row:
            print(
                f"  vnodes {row['vnodes']:>4}  4 -> 5: moved {row['moved_users']:.4f} of users "
                f"(hash space {row['moved_hash']:.4f}; {row['over_ideal']:.2f}x the ideal 0.2)"
            )
        else:
            print(
                f"  vnodes {row['vnodes']:>4}  {row['ring']:<17} "
                f"users {row['users_max_over_mean']:.3f}  "
                f"hash space {row['hash_max_over_mean']:.3f}"
            )


if __name__ == "__main__":
    main()
