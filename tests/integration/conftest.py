"""Integration fixtures: one real lab (control plane + kwok hosts) for the whole test session, and
the real BMCs the fence driver and Fence controller tests share.

The lab is started through ``remediator.lab.client`` -- the same code path as ``remediator lab up``
-- in a temporary state dir, and stopped at the end of the session. Tests keep apart by namespaces
and unique names; a test that breaks a host heals it before it returns.

The BMCs are real servers on 127.0.0.1, started once per session through ``remediator.lab.bmc``:
sushy-emulator (libvirt ``test:///default``, one system), our pyghmi IPMI BMC and the scripted HTTPS
Redfish BMC for misbehaving devices; all behind one test CA, with one set of credentials.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from remediator import kube
from remediator.lab import client as lab_client
from remediator.lab.bmc import IpmiBmc, ScriptedRedfishBmc, SushyEmulator
from remediator.lab.pki import CertificateAuthority
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers

LAB_HOSTS = 3
USER = "admin"
PASSWORD = "Pw-9f3c1e-not-in-output"
TEST_DOMAIN_UUID = "6695eb01-f6a4-8304-79aa-97f2502e193f"  # libvirt's test:///default domain
IPMI_UUID = "c0ffee00-1111-2222-3333-444455556666"


@dataclass(frozen=True)
class RunningLab:
    paths: LabPaths
    api: client.ApiClient
    timers: LabTimers

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    # A short socket path: AF_UNIX paths are limited to 107 bytes.
    root = Path(os.environ.get("REMEDIATOR_TEST_LAB_DIR") or tmp_path_factory.mktemp("lab"))
    paths = LabPaths(root)
    timers = LabTimers()
    # Tests start their own controllers (and kill them); the shared lab runs none, and no policy.
    lab_client.start(paths, LAB_HOSTS, timers, timeout=300, controller=False, health_check=False)
    try:
        api = kube.api_client(paths.kubeconfig)
        yield RunningLab(paths, api, timers)
    finally:
        lab_client.stop(paths)


@pytest.fixture
def namespace(lab: RunningLab) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    lab.core.create_namespace({"metadata": {"name": name}})
    yield name
    lab.core.delete_namespace(name)


# --- real BMCs -----------------------------------------------------------------------------------


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
def sushy_libvirt(bmc_dir: Path, ca: CertificateAuthority) -> Iterator[SushyEmulator]:
    """sushy-emulator, libvirt driver on test:///default: one system, instant power changes."""
    with SushyEmulator(
        bmc_dir / "sushy-libvirt", username=USER, password=PASSWORD, ca=ca, libvirt_uri="test:///default"
    ) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def ipmi_bmc(bmc_dir: Path) -> Iterator[IpmiBmc]:
    with IpmiBmc(bmc_dir / "ipmi", username=USER, password=PASSWORD, system_uuid=IPMI_UUID) as bmc:
        yield bmc


@pytest.fixture
def ipmi(ipmi_bmc: IpmiBmc) -> IpmiBmc:
    """The IPMI BMC, answering and powered on."""
    ipmi_bmc.set_stuck(False)
    ipmi_bmc.set_power(True)
    return ipmi_bmc


@pytest.fixture(scope="session")
def scripted_server(bmc_dir: Path, ca: CertificateAuthority) -> Iterator[ScriptedRedfishBmc]:
    server = ScriptedRedfishBmc(username=USER, password=PASSWORD, ca=ca).start(bmc_dir)
    yield server
    server.stop()
