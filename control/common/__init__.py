"""Shared plumbing below scheduler, access, presence and gray: config machinery, errors,
tickets, the key-value backends (embedded and etcd), the node registry, supervised tasks."""
