"""BMC fixtures of the fence driver tests beyond the shared ones in tests/integration/conftest.py: a
second CA, sushy's fake driver (slow power changes), the scripted BMC reset for each test, closed ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from remediator.fencing.base import Credentials
from remediator.lab.bmc import ScriptedRedfishBmc, ScriptedSystem, SushyEmulator
from remediator.lab.pki import CertificateAuthority
from tests.integration.conftest import PASSWORD, TEST_DOMAIN_UUID, USER

FAKE_UUIDS = ("27946b59-9e44-4fa7-8e91-f3527a1ef001", "27946b59-9e44-4fa7-8e91-f3527a1ef002")


@pytest.fixture(scope="session")
def creds() -> Credentials:
    return Credentials(USER, PASSWORD)


@pytest.fixture(scope="session")
def other_ca_file(bmc_dir: Path) -> str:
    other = CertificateAuthority.create("some-other-ca")
    other.write(bmc_dir / "other-ca.crt", bmc_dir / "other-ca.key")
    return str(bmc_dir / "other-ca.crt")


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


@pytest.fixture
def scripted(scripted_server: ScriptedRedfishBmc) -> ScriptedRedfishBmc:
    """The scripted Redfish BMC, reset to one well-behaved system for each test."""
    scripted_server.reset([ScriptedSystem(id="1", uuid=TEST_DOMAIN_UUID, serial="SN-0001")])
    return scripted_server


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
