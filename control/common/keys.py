"""Every key layout in the key-value store (etcd), in one place.

Everything lives under the cluster's prefix (``cluster.prefix``, default ``/imctl``)::

    <prefix>/nodes/<node_id>        NodeRecord JSON on the node's lease (registry)
    <prefix>/drain/<node_id>        DrainRequest JSON, written by the admin API
    <prefix>/gray/<name>            Release JSON, compare-and-swap on its revision
    <prefix>/controller/leader      the presence controller's identity on its lease
    <prefix>/presence/ring          RingSpec JSON (the status cluster ring)

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
    def controller(self) -> str:
        """The directory of the controller's election key."""
        return self.root + "/controller/"

    @property
    def presence(self) -> str:
        return self.root + "/presence/"

    def node(self, node_id: str) -> str:
        return self.nodes + node_id

    def drain(self, node_id: str) -> str:
        return self.drains + node_id

    def release(self, name: str) -> str:
        return self.gray + name

    @property
    def leader(self) -> str:
        """The presence controller's election key."""
        return self.controller + LEADER

    @property
    def ring(self) -> str:
        return self.presence + RING


LEADER = "leader"  # the election key's name in ``controller/``
RING = "ring"  # the ring spec's name in ``presence/``
