"""TLS for every listener: the server context, and a renewed certificate served without a
restart.

``ssl.SSLContext.load_cert_chain`` on a live context makes new handshakes present the new
chain while established connections keep theirs, so a renewal is a reload of the one
context the listener was given. :class:`CertificateReloader` (a supervised task,
``tls-reload``) notices replaced files by their stat signature (inode, size, mtime), reads
them once, and loads a content it has not served yet. The new pair is proven on a scratch
context first: a context that failed half-way (a new certificate, the old key) would fail
every handshake. A pair that does not load (unreadable, not PEM, key mismatch) is logged
and counted, and the old one kept.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from control.common.tasks import pause

log = logging.getLogger("imctl.tls")


class CertificateError(ValueError):
    """A certificate and key that cannot serve: the message says which file and why."""


@dataclass(frozen=True)
class Certificate:
    """What a loaded chain's leaf says, for logs and metrics."""

    serial: int
    subject: str
    not_after: float  # Unix time

    @classmethod
    def of(cls, pem: bytes) -> Certificate:
        leaf = x509.load_pem_x509_certificate(pem)
        return cls(
            leaf.serial_number, leaf.subject.rfc4514_string(), leaf.not_valid_after_utc.timestamp()
        )


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CertificateError(f"{what} {path}: {exc.strerror or exc}") from None


def _load(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """Load PEM bytes into ``context`` (load_cert_chain takes only paths: private temp files
    hold exactly the bytes that were read, so the files changing again cannot mix pairs)."""
    with tempfile.TemporaryDirectory(prefix="imctl-tls-") as tmp:  # mode 0700
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        context.load_cert_chain(cert_path, key_path)


#: asyncio's TLS transport reads into a buffer of ``SSLProtocol.max_size`` per connection,
#: 256 KiB zero-filled at its start (CPython 3.11-3.13): ~145 KB of RSS per idle wss
#: connection. A TLS record is at most 16 KiB, so 16 KiB reads cost a large burst a few more
#: loop turns and an IM connection nothing (load/bench_tls.py: 153 -> 41 KB per connection).
TLS_READ_BUFFER = 16 * 1024


def _small_read_buffers() -> None:
    """Every TLS connection of this process (listeners, peers' https) reads 16 KiB at a
    time. Process-wide: asyncio creates its SSLProtocol itself, no subclass can be given."""
    if getattr(asyncio.sslproto.SSLProtocol, "max_size", 0) > TLS_READ_BUFFER:
        asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def _new_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def check_pair(
    cert: bytes, key: bytes, cert_path: str = "cert", key_path: str = "key"
) -> Certificate:
    """Raise CertificateError unless ``cert`` and ``key`` make a serving pair."""
    try:
        _load(_new_context(), cert, key)
        return Certificate.of(cert)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in str(exc).upper():
            reason = "the key does not belong to the certificate"
        raise CertificateError(f"{cert_path} with {key_path}: {reason}") from None
    except ValueError as exc:
        raise CertificateError(f"{cert_path}: not a PEM certificate ({exc})") from None


def server_context(cert_path: str, key_path: str) -> tuple[ssl.SSLContext, Certificate]:
    """A server context serving the pair in these files (TLS 1.2 and up)."""
    cert, key = _read(cert_path, "certificate"), _read(key_path, "key")
    leaf = check_pair(cert, key, cert_path, key_path)
    context = _new_context()
    _load(context, cert, key)
    _small_read_buffers()
    return context, leaf


def client_context(cafile: str = "") -> ssl.SSLContext:
    """A client context trusting ``cafile`` (a private CA), or the system's store."""
    try:
        return ssl.create_default_context(cafile=cafile or None)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"CA file {cafile}: {getattr(exc, 'strerror', None) or exc}"
        ) from None


def _signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CertificateReloader:
    """Serve renewed certificate files on a live context. ``run_once`` looks once and
    returns what it did in a sentence; ``run`` repeats it every ``interval_s``."""

    def __init__(
        self,
        context: ssl.SSLContext,
        cert_path: str,
        key_path: str,
        interval_s: float,
        *,
        name: str = "tls",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.context = context
        self.cert_path = cert_path
        self.key_path = key_path
        self.interval_s = interval_s
        self.name = name
        self.clock = clock
        self.seen = (_signature(cert_path), _signature(key_path))
        self.digest = self._digest(*self._contents())
        self.certificate = Certificate.of(_read(cert_path, "certificate"))
        self.loaded_at = clock()
        self.results: dict[str, int] = {}

    def _contents(self) -> tuple[bytes, bytes]:
        return _read(self.cert_path, "certificate"), _read(self.key_path, "key")

    @staticmethod
    def _digest(cert: bytes, key: bytes) -> bytes:
        return hashlib.sha256(len(cert).to_bytes(8, "big") + cert + key).digest()

    def _count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1

    def run_once(self) -> str:
        seen = (_signature(self.cert_path), _signature(self.key_path))
        if seen == self.seen:
            return "unchanged"
        # Remembered whatever comes of it: a bad pair is tried again only once the files
        # change again (a renewal writing the key after the certificate, say).
        self.seen = seen
        try:
            cert, key = self._contents()
            digest = self._digest(cert, key)
            if digest == self.digest:
                return "files touched, same certificate"
            leaf = check_pair(cert, key, self.cert_path, self.key_path)
            _load(self.context, cert, key)
        except CertificateError as exc:
            self._count("error")
            log.error(
                "%s: kept the certificate in use (serial %x): %s",
                self.name,
                self.certificate.serial,
                exc,
            )
            return f"kept the old certificate: {exc}"
        self.digest = digest
        old, self.certificate = self.certificate, leaf
        self.loaded_at = self.clock()
        self._count("reloaded")
        log.warning(
            "%s: serving a renewed certificate (serial %x, was %x; valid until %s)",
            self.name,
            leaf.serial,
            old.serial,
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(leaf.not_after)),
        )
        return f"reloaded: serial {leaf.serial:x}"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await pause(stop, self.interval_s)
            if not stop.is_set():
                self.run_once()

    # Prometheus collector: read at scrape time.
    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "imctl_tls_reloads", "Renewed certificate files seen, by result", labels=["result"]
        )
        for result, n in self.results.items():
            reloads.add_metric([result], n)
        yield reloads
        yield GaugeMetricFamily(
            "imctl_tls_certificate_expiry_timestamp_seconds",
            "When the certificate being served expires (Unix time)",
            value=self.certificate.not_after,
        )
        yield GaugeMetricFamily(
            "imctl_tls_certificate_loaded_timestamp_seconds",
            "When the certificate being served was loaded (Unix time)",
            value=self.loaded_at,
        )

    def register(self, registry: CollectorRegistry) -> None:
        try:
            registry.register(self)
        except ValueError:  # imctl up: several parts on one registry serve the same files
            pass
