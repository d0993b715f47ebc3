"""What makes a configured secret unusable off loopback: too short, built in, or a
placeholder someone forgot to replace. Pure."""

from __future__ import annotations

MIN_SECRET_BYTES = 32

# Secrets that ship with imctl (defaults and the example configs): anyone can read them.
BUILT_IN = frozenset(
    {
        "imctl-local-development-key-change-me",
        "imctl-local-internal-token",
        "imctl-local-internal-token-not-for-production",
        "imctl-local-cluster-secret-not-for-production",
    }
)
# Words that mark a value as a stand-in for a real secret.
PLACEHOLDERS = (
    "replace-me",
    "replace_me",
    "replaceme",
    "change-me",
    "change_me",
    "changeme",
    "not-for-production",
    "placeholder",
    "example",
    "insecure",
)


def weakness(secret: str) -> str | None:
    """Why ``secret`` must not guard a listener others can reach; None when it may.
    The answer never quotes the secret."""
    if secret in BUILT_IN:
        return "is a secret built into imctl (public)"
    lowered = secret.lower()
    for word in PLACEHOLDERS:
        if word in lowered:
            return f"is a placeholder (contains {word!r}); set a random secret"
    size = len(secret.encode("utf-8", "surrogateescape"))
    if size < MIN_SECRET_BYTES:
        return f"is {size} bytes; at least {MIN_SECRET_BYTES} are needed"
    return None
