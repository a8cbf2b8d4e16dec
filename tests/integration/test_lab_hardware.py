"""The lab's hosts have real BMCs: a libvirt host domain per host, switched over Redfish
(sushy-emulator) and IPMI (pyghmi BMC), registered as NodeFencing with credentials Secrets; power
changes reach the host through libvirt events."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client

from remediator.fencing import PowerState
from remediator.fencing.verify import power_off_verified, power_on_verified
from remediator.kube import node_ready_status, node_system_uuid
from remediator.lab import client as lab_client
from remediator.lab.inspect import host_bmc
from remediator.nodefencing import CONTROLLER_NAMESPACE_DEFAULT, open_level_driver, read_node_fencing
from tests.integration.conftest import LAB_HOSTS, RunningLab
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _host(lab: RunningLab, name: str) -> dict[str, Any]:
    hosts = lab_client.request(lab.paths, {"command": "status"})["lab"]["hosts"]
    return next(h for h in hosts if h["name"] == name)


def test_every_host_has_a_node_fencing_with_redfish_then_ipmi(lab: RunningLab) -> None:
    for i in range(1, LAB_HOSTS + 1):
        spec = read_node_fencing(lab.api, f"lab-host-{i}")
        assert [level.type for level in spec.levels] == ["redfish", "ipmi"]
        assert spec.levels[0].address.startswith("redfish+https://127.0.0.1:")
        assert spec.levels[1].address.startswith("ipmi://127.0.0.1:")
        assert spec.levels[1].ipmi_legacy_sha1 is True
        secret = lab.core.read_namespaced_secret(f"bmc-lab-host-{i}", CONTROLLER_NAMESPACE_DEFAULT)
        assert set(secret.data) == {"username", "password", "ca.crt"}
        assert base64.b64decode(secret.data["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")


@pytest.mark.parametrize("level_index", [0, 1], ids=["redfish", "ipmi"])
def test_each_bmc_reports_the_nodes_system_uuid(lab: RunningLab, level_index: int) -> None:
    node = lab.core.read_node("lab-host-1")
    level = read_node_fencing(lab.api, "lab-host-1").levels[level_index]
    driver = open_level_driver(level, lab.api, CONTROLLER_NAMESPACE_DEFAULT)
    try:
        assert driver.identity().system_uuid == node_system_uuid(node)
        assert driver.power_state() is PowerState.ON
    finally:
        driver.close()


def test_power_off_through_a_bmc_stops_the_host_and_power_on_boots_it(lab: RunningLab) -> None:
    host = "lab-host-2"
    fencing = read_node_fencing(lab.api, host)
    ipmi = open_level_driver(fencing.levels[1], lab.api, CONTROLLER_NAMESPACE_DEFAULT)
    redfish = open_level_driver(fencing.levels[0], lab.api, CONTROLLER_NAMESPACE_DEFAULT)
    leases = client.CoordinationV1Api(lab.api)
    try:
        result = power_off_verified(ipmi, timeout=20)
        assert result.state is PowerState.OFF
        # Both BMCs see the same hardware.
        assert redfish.power_state() is PowerState.OFF
        # The host is down: the lab saw the libvirt event and its kubelet (kwok) is gone ...
        wait_for(lambda: _host(lab, host)["kwokPid"] is None, 10, f"{host}'s kwok to stop")
        assert _host(lab, host)["power"] == "off"

        # ... so its node lease stops being renewed.
        def lease_stale() -> bool:
            renewed = leases.read_namespaced_lease(host, "kube-node-lease").spec.renew_time
            return (datetime.now(UTC) - renewed).total_seconds() > 3 * lab.timers.lease_renew_interval

        wait_for(lease_stale, 10 * lab.timers.lease_renew_interval, f"{host}'s lease to go stale")
    finally:
        on = power_on_verified(redfish, timeout=20)
        ipmi.close()
        redfish.close()
    assert on.state is PowerState.ON
    wait_for(lambda: _host(lab, host)["kwokPid"], 10, f"{host}'s kwok to start again")
    wait_for(lambda: node_ready_status(lab.core.read_node(host)) == "True", 60, f"{host} Ready")


def test_power_loss_takes_the_node_down_and_heal_brings_it_back(lab: RunningLab) -> None:
    host = "lab-host-3"
    level = read_node_fencing(lab.api, host).levels[0]
    redfish = open_level_driver(level, lab.api, CONTROLLER_NAMESPACE_DEFAULT)
    try:
        lab_client.request(lab.paths, {"command": "fail", "host": host, "mode": "power-loss"})
        assert redfish.power_state() is PowerState.OFF
        grace = lab.timers.node_monitor_grace_period
        wait_for(
            lambda: node_ready_status(lab.core.read_node(host)) == "Unknown",
            grace * 3,
            f"{host} to be marked Ready=Unknown",
        )
        lab_client.request(lab.paths, {"command": "heal", "host": host})
        assert redfish.power_state() is PowerState.ON
        wait_for(lambda: node_ready_status(lab.core.read_node(host)) == "True", 60, f"{host} Ready again")
        assert _host(lab, host)["failure"] is None
    finally:
        redfish.close()


def test_fence_redfish_of_fence_agents_reads_a_lab_bmc(lab: RunningLab) -> None:
    info = host_bmc(lab.paths, "lab-host-1")
    out = subprocess.run(
        [
            "fence_redfish",
            "--ip=127.0.0.1",
            f"--ipport={info['redfish']['port']}",
            "--ssl-insecure",
            f"--systems-uri={info['redfish']['systemPath']}",
            f"--username={info['username']}",
            f"--password={info['password']}",
            "--action=status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "Status: ON" in out.stdout
