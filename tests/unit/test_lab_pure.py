"""Unit tests for the lab's pure pieces: timers, certificates, binary names, state files."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from remediator.errors import BinaryBuildError
from remediator.lab import binaries
from remediator.lab.pki import CertificateAuthority
from remediator.lab.state import LabPaths, host_name, pid_alive
from remediator.lab.timers import LabTimers, _go_duration


@pytest.mark.parametrize(
    ("seconds", "expected"), [(10, "10s"), (1.0, "1s"), (0.5, "500ms"), (12.25, "12250ms")]
)
def test_go_duration(seconds: float, expected: str) -> None:
    assert _go_duration(seconds) == expected


def test_default_timers_map_to_component_flags() -> None:
    timers = LabTimers()
    assert "--node-monitor-grace-period=10s" in timers.controller_manager_flags()
    assert "--node-monitor-period=1s" in timers.controller_manager_flags()
    assert "--default-unreachable-toleration-seconds=300" in timers.apiserver_flags()
    assert timers.lease_renew_interval == 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_monitor_grace_period": 1.0, "node_monitor_period": 1.0},
        {"node_monitor_period": 0},
        {"node_lease_duration": 0},
        {"node_lease_duration": 60, "node_monitor_grace_period": 10},
    ],
)
def test_inconsistent_timers_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LabTimers(**kwargs)


def test_server_certificate_chains_to_the_ca_and_names_loopback(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("test-ca")
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    pair = ca.issue_server("svc", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    pair.write(tmp_path / "s.crt", tmp_path / "s.key")
    assert oct((tmp_path / "s.key").stat().st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    # The standard library accepts the pair as a server identity trusted through the CA.
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert client.verify_mode == ssl.CERT_REQUIRED
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


def test_client_certificate_carries_user_and_groups() -> None:
    ca = CertificateAuthority.create("test-ca")
    cert = x509.load_pem_x509_certificate(ca.issue_client("alice", ["system:masters"]).cert_pem)
    assert cert.subject.rfc4514_string() == "CN=alice,O=system:masters"


def test_ca_round_trips_through_files(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("test-ca")
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    again = CertificateAuthority.load(tmp_path / "ca.crt", tmp_path / "ca.key")
    issued = x509.load_pem_x509_certificate(again.issue_client("bob").cert_pem)
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))


@pytest.mark.parametrize(
    ("package", "name"),
    [
        ("go.etcd.io/etcd/server/v3", "server"),
        ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
        ("sigs.k8s.io/kwok/cmd/kwok", "kwok"),
    ],
)
def test_go_binary_name(package: str, name: str) -> None:
    assert binaries._go_binary_name(package) == name


def test_pinned_versions_come_from_the_go_modules() -> None:
    assert binaries.KUBE.version() == "v1.37.2"
    assert binaries.ETCD.version().startswith("v3.6.")
    assert binaries.KWOK.version().startswith("v0.")
    flags = binaries.KUBE.ldflags()
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "gitMinor=37" in flags


def test_build_without_go_names_the_problem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(BinaryBuildError, match="`go` is not on PATH"):
        binaries.build_tool(binaries.KWOK)


def test_a_binary_of_another_version_is_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = tmp_path / "kwok"
    other.write_text("#!/bin/sh\necho 'kwok version v0.1.0'\n")
    other.chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert binaries.find_binary("kwok") is None


def test_status_file_round_trip_and_pid_liveness(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "lab")
    assert paths.read_status() is None
    paths.write_status({"status": "ready", "pid": os.getpid()})
    assert paths.read_status() == {"status": "ready", "pid": os.getpid()}
    paths.status_file.write_text("{not json")
    assert paths.read_status() is None
    assert pid_alive(os.getpid())
    assert not pid_alive(None)
    assert host_name(2) == "lab-host-2"
