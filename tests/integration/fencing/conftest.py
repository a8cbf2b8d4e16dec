"""Real BMC endpoints for the fence driver tests, started once per session via remediator.lab.bmc."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediator.fencing.base import Credentials
from remediator.lab.bmc import IpmiBmc, ScriptedRedfishBmc, ScriptedSystem, SushyEmulator
from remediator.lab.pki import CertificateAuthority

USER = "admin"
PASSWORD = "Pw-9f3c1e-not-in-output"
TEST_DOMAIN_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # libvirt's test:///default domain
FAKE_UUIDS = ("27946b59-9e44-4fa7-8e91-f3527a1ef001", "27946b59-9e44-4fa7-8e91-f3527a1ef002")
IPMI_UUID = "c0ffee00-1111-2222-3333-444455556666"


@pytest.fixture(scope="session")
def creds() -> Credentials:
    return Credentials(USER, PASSWORD)


@pytest.fixture(scope="session")
def bmc_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bmc")


@pytest.fixture(scope="session")
def ca(bmc_dir: Path) -> CertificateAuthority:
    authority = CertificateAuthority.create("remediator-test-bmc-ca")
    authority.write(bmc_dir / "ca.crt", bmc_dir / "ca.key")
    return authority


@pytest.fixture(scope="session")
def ca_file(bmc_dir: Path, ca: CertificateAuthority) -> str:
    return str(bmc_dir / "ca.crt")


@pytest.fixture(scope="session")
def other_ca_file(bmc_dir: Path) -> str:
    other = CertificateAuthority.create("some-other-ca")
    other.write(bmc_dir / "other-ca.crt", bmc_dir / "other-ca.key")
    return str(bmc_dir / "other-ca.crt")


@pytest.fixture(scope="session")
def sushy_libvirt(bmc_dir: Path, ca: CertificateAuthority) -> Iterator[SushyEmulator]:
    """sushy-emulator, libvirt driver on test:///default: one system, instant power changes."""
    with SushyEmulator(
        bmc_dir / "sushy-libvirt", username=USER, password=PASSWORD, ca=ca, libvirt_uri="test:///default"
    ) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def sushy_fake(bmc_dir: Path, ca: CertificateAuthority) -> Iterator[SushyEmulator]:
    """sushy-emulator, fake driver: two systems, power changes land after a random 1-11 s."""
    systems = [
        {"uuid": FAKE_UUIDS[0], "name": "fake-0", "power_state": "On", "nics": []},
        {"uuid": FAKE_UUIDS[1], "name": "fake-1", "power_state": "Off", "nics": []},
    ]
    with SushyEmulator(
        bmc_dir / "sushy-fake", username=USER, password=PASSWORD, ca=ca, fake_systems=systems
    ) as emu:
        yield emu


@pytest.fixture(scope="session")
def scripted_server(bmc_dir: Path, ca: CertificateAuthority) -> Iterator[ScriptedRedfishBmc]:
    server = ScriptedRedfishBmc(username=USER, password=PASSWORD, ca=ca).start(bmc_dir)
    yield server
    server.stop()


@pytest.fixture
def scripted(scripted_server: ScriptedRedfishBmc) -> ScriptedRedfishBmc:
    """The scripted Redfish BMC, reset to one well-behaved system for each test."""
    scripted_server.systems = {"1": ScriptedSystem(id="1", uuid=TEST_DOMAIN_UUID, serial="SN-0001")}
    scripted_server.garbage = False
    scripted_server.fail_status = None
    scripted_server.sessions_enabled = True
    return scripted_server


@pytest.fixture(scope="session")
def ipmi_bmc(bmc_dir: Path) -> Iterator[IpmiBmc]:
    with IpmiBmc(bmc_dir / "ipmi", username=USER, password=PASSWORD, system_uuid=IPMI_UUID) as bmc:
        yield bmc


@pytest.fixture
def ipmi(ipmi_bmc: IpmiBmc) -> IpmiBmc:
    ipmi_bmc.set_stuck(False)
    ipmi_bmc.set_power(True)
    return ipmi_bmc


@pytest.fixture
def closed_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
