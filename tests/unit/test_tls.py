"""The certificate reloader, one look at a time on an injected clock, and the tls config
section's checks."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from control.common.errors import ConfigError
from control.common.tls import CertificateReloader, server_context
from control.settings import parse_settings
from tests.certs import Authority, install, issue, make_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return make_ca(tmp_path_factory.mktemp("ca"))


def write_pair(directory: Path, ca: Authority, serial: int) -> tuple[Path, Path]:
    cert, key = issue(ca, serial)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    install(cert_path, cert)
    install(key_path, key)
    return cert_path, key_path


def test_renewed_files_are_loaded_and_bad_ones_keep_the_old(tmp_path: Path, ca: Authority) -> None:
    cert, key = write_pair(tmp_path, ca, 101)
    context, leaf = server_context(str(cert), str(key))
    assert leaf.serial == 101
    now = [1000.0]
    reloader = CertificateReloader(context, str(cert), str(key), 1.0, clock=lambda: now[0])
    assert reloader.run_once() == "unchanged"

    now[0] = 2000.0
    write_pair(tmp_path, ca, 102)
    assert reloader.run_once() == "reloaded: serial 66"
    assert reloader.certificate.serial == 102 and reloader.loaded_at == 2000.0
    assert reloader.run_once() == "unchanged"

    # Rewritten with the same bytes (a renewal job that ran early): nothing to load.
    install(cert, cert.read_bytes())
    assert reloader.run_once() == "files touched, same certificate"

    # A key that is not the certificate's: the old pair stays, counted.
    other_cert, _ = issue(ca, 103)
    install(cert, other_cert)
    said = reloader.run_once()
    assert said.startswith("kept the old certificate") and "does not belong" in said, said
    assert reloader.certificate.serial == 102 and reloader.results == {"reloaded": 1, "error": 1}

    # Unreadable (gone mid-renewal), then garbage: kept, counted, no exception.
    cert.unlink()
    assert "kept the old certificate" in reloader.run_once()
    install(cert, b"not a certificate")
    assert "kept the old certificate" in reloader.run_once()
    assert reloader.results["error"] == 3 and reloader.certificate.serial == 102
    # The live context still serves 102's pair: a handshake proves it below (integration).
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER

    # The key renewed after the certificate: the pair is whole again on the next look.
    write_pair(tmp_path, ca, 104)
    assert reloader.run_once() == "reloaded: serial 68"
    metrics = {m.name: m for m in reloader.collect()}
    assert metrics["imctl_tls_certificate_expiry_timestamp_seconds"].samples[0].value > 0


def test_config_names_a_bad_tls_section(tmp_path: Path, ca: Authority) -> None:
    cert, key = write_pair(tmp_path, ca, 7)
    ok = parse_settings({"scheduler": {"tls": {"cert": str(cert), "key": str(key)}}})
    assert ok.scheduler.tls.enabled and ok.scheduler.tls.scheme == "https"
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {
                "scheduler": {"tls": {"cert": str(cert)}},
                "access": {"tls": {"cert": str(tmp_path / "none.pem"), "key": str(key)}},
                "cors": {"origins": ["https://app.example.com/", "*", "http://127.0.0.1:8000"]},
            }
        )
    problems = "\n".join(info.value.problems)
    assert "scheduler.tls.key: required with scheduler.tls.cert" in problems
    assert f"access.tls: certificate {tmp_path / 'none.pem'}: No such file" in problems
    assert "cors.origins[0]" in problems and "cors.origins[1]" in problems
    assert "cors.origins[2]" not in problems
