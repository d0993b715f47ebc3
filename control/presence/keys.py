"""Every Redis key layout of a presence shard, in one place (``presence.key_prefix``,
default ``imctl:``)::

    <prefix>u:<uid>    string: the user's records back to back (see lua/_lib.lua)
    <prefix>n:<node>   set: members (uid␟device␟conn) of the entries on one access node
    <prefix>exp        sorted set: member -> deadline in ms (the expiry index)
    <prefix>cnt        hash: counters (all, r:<region>, n:<node>, p:<platform>)
    <prefix>ev         stream: online / offline / status events
    <prefix>ring       string: the ring version this shard serves (fencing; absent = 0)
    <prefix>t:<member> string with a TTL: an offline tombstone for one (uid, device, conn),
                       so a resize's mover never copies a connection that went offline
    <prefix>mv         string: the move epoch, the counts seqlock (odd = a batch in flight)

The scripts take the keys they touch in ``KEYS`` where the caller can name them (see
``RedisShard``), and every key is the prefix and a suffix: the Redis Cluster engine gives
each bucket of users the prefix ``<prefix>{<tag>}:`` (``cluster_link.BucketShard``), so all
of a bucket's keys share one slot and every script is single-slot.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "imctl:"
USER = "u:"
NODE = "n:"
TOMBSTONE = "t:"


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key layout of one presence shard, from its prefix."""

    prefix: str = DEFAULT_PREFIX

    def user(self, uid: str) -> str:
        return self.prefix + USER + uid

    def node(self, node: str) -> str:
        return self.prefix + NODE + node

    def tombstone(self, member: str) -> str:
        """The tombstone of one member (uid␟device␟conn)."""
        return self.prefix + TOMBSTONE + member

    @property
    def users(self) -> str:
        """The common start of every user key (``user(uid) == users + uid``)."""
        return self.prefix + USER

    @property
    def expiry(self) -> str:
        return self.prefix + "exp"

    @property
    def counters(self) -> str:
        return self.prefix + "cnt"

    @property
    def events(self) -> str:
        return self.prefix + "ev"

    @property
    def ring(self) -> str:
        return self.prefix + "ring"

    @property
    def move_epoch(self) -> str:
        return self.prefix + "mv"
