"""Every key layout in the key-value store (etcd), in one place.

Everything lives under the cluster's prefix (``cluster.prefix``, default ``/imctl``)::

    <prefix>/nodes/<node_id>        NodeRecord JSON on the node's lease (registry)
    <prefix>/drain/<node_id>        DrainRequest JSON, written by the admin API
    <prefix>/gray/<name>            Release JSON, compare-and-swap on its revision
    <prefix>/gray-audit/<name>/<rev>  one AuditRecord per change of the release, keyed by
                                    the zero-padded revision of the write (keys sort by time)
    <prefix>/gray-stable/current    Stable JSON: the stable track's target, set by promote
    <prefix>/controller/leader      the presence controller's identity on its lease
    <prefix>/presence/ring          RingSpec JSON (the status cluster ring)
    <prefix>/rebalance/cluster      RebalanceRequest JSON, written by the admin API (or the
                                    controller's automatic mode)
    <prefix>/rebalance-plan/cluster RebalancePlan JSON: the round the leader controller
                                    planned, followed by the access nodes
    <prefix>/schedulers/<id>        ServedReleases JSON on the scheduler's lease: the release
                                    revisions its snapshot serves (propagation)

The directories end in ``/`` so a range or watch over one never reaches a sibling whose
name merely starts the same (``nodes/`` and ``nodes-old/``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "/imctl"


@dataclass(frozen=True, slots=True)
class Keys:
    """The key layout of one cluster, from its prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def root(self) -> str:
        return self.prefix.rstrip("/")

    @property
    def nodes(self) -> str:
        return self.root + "/nodes/"

    @property
    def drains(self) -> str:
        return self.root + "/drain/"

    @property
    def gray(self) -> str:
        return self.root + "/gray/"

    @property
    def gray_audit(self) -> str:
        return self.root + "/gray-audit/"

    @property
    def gray_stable(self) -> str:
        """The directory of the stable record (one, named ``current``)."""
        return self.root + "/gray-stable/"

    @property
    def controller(self) -> str:
        """The directory of the controller's election key."""
        return self.root + "/controller/"

    @property
    def rebalance(self) -> str:
        """The directory of rebalance requests (one, named ``cluster``)."""
        return self.root + "/rebalance/"

    @property
    def rebalance_plan(self) -> str:
        """The directory of the rebalance round being shed (one, named ``cluster``)."""
        return self.root + "/rebalance-plan/"

    @property
    def presence(self) -> str:
        return self.root + "/presence/"

    @property
    def schedulers(self) -> str:
        """The directory of the schedulers' served-release records (one per scheduler)."""
        return self.root + "/schedulers/"

    def scheduler(self, scheduler_id: str) -> str:
        return self.schedulers + scheduler_id

    def node(self, node_id: str) -> str:
        return self.nodes + node_id

    def drain(self, node_id: str) -> str:
        return self.drains + node_id

    def release(self, name: str) -> str:
        return self.gray + name

    def release_audit(self, name: str) -> str:
        """The directory of one release's audit records (ends in ``/``)."""
        return self.gray_audit + name + "/"

    def audit(self, name: str, revision: int) -> str:
        return self.release_audit(name) + audit_name(revision)

    @property
    def leader(self) -> str:
        """The presence controller's election key."""
        return self.controller + LEADER

    @property
    def ring(self) -> str:
        return self.presence + RING


LEADER = "leader"  # the election key's name in ``controller/``
RING = "ring"  # the ring spec's name in ``presence/``
AUDIT_DIGITS = 20  # an etcd revision is an int64: 19 digits; zero-padded so keys sort by it


def audit_name(revision: int) -> str:
    """An audit record's name in its release's directory: the zero-padded revision."""
    return f"{revision:0{AUDIT_DIGITS}d}"
