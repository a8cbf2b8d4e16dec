"""Manual Fences end to end: each afterFence mode against the Redfish level and the IPMI level."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from remediator.lab.bmc import IpmiBmc, SushyEmulator
from tests.integration.conftest import IPMI_UUID, PASSWORD, TEST_DOMAIN_UUID, RunningLab
from tests.integration.controller.conftest import (
    Controller,
    HostAgent,
    MakeNode,
    create_fence,
    fence_events,
    ipmi_level,
    redfish_level,
    redfish_power,
    taint_keys,
    wait_done,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _pod_on(lab: RunningLab, namespace: str, node: str) -> str:
    pod = {
        "metadata": {"name": f"work-{node}", "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.invalid/app:1"}]},
    }
    lab.core.create_namespaced_pod(namespace, pod)
    return str(pod["metadata"]["name"])


def _volume_attachment(lab: RunningLab, node: str) -> str:
    name = f"va-{node}"
    client.StorageV1Api(lab.api).create_volume_attachment(
        {
            "metadata": {"name": name},
            "spec": {
                "attacher": "test.csi.example.com",
                "nodeName": node,
                "source": {"persistentVolumeName": f"pv-{node}"},
            },
        }
    )
    return name


def _va_exists(lab: RunningLab, name: str) -> bool:
    return any(va.metadata.name == name for va in client.StorageV1Api(lab.api).list_volume_attachment().items)


def _pod_exists(lab: RunningLab, namespace: str, name: str) -> bool:
    return any(p.metadata.name == name for p in lab.core.list_namespaced_pod(namespace).items)


@pytest.mark.parametrize("after", ["Keep", "PowerOn", "Remove"])
def test_redfish_fence(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, sushy_on: SushyEmulator,
    bmc_dir: Path,
    namespace: str, after: str,
) -> None:  # fmt: skip
    node = make_node(TEST_DOMAIN_UUID)
    node.fencing([redfish_level(sushy_on.address())])
    pod = _pod_on(lab, namespace, node.name)
    va = _volume_attachment(lab, node.name)
    is_on = redfish_power(sushy_on.address(), bmc_dir / "ca.crt")
    with HostAgent(node, is_on):
        name = create_fence(lab, node.name, afterFence=after, reason="test")
        status = wait_done(lab, name)
    assert status["phase"] == "Succeeded", status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["FenceVerified"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "True" and conditions["Processing"]["status"] == "False"
    phases = [p["phase"] for p in status["phases"]]
    expected_tail = {
        "Keep": ["Succeeded"],
        "PowerOn": ["Recovering", "Succeeded"],
        "Remove": ["Removing", "Succeeded"],
    }
    assert phases == ["Pending", "Isolating", "PoweringOff", "Verified", "Releasing", *expected_tail[after]]
    assert all("durationSeconds" in p for p in status["phases"])
    [attempt] = status["attempts"][:1]
    assert attempt["result"] == "Succeeded" and attempt["levelType"] == "redfish" and attempt["commandSent"]
    assert status["facts"]["podsDeleted"] == 1 and status["facts"]["volumeAttachmentsDeleted"] == 1
    assert not _pod_exists(lab, namespace, pod) and not _va_exists(lab, va)
    n = node.read()
    if after == "Keep":
        assert not is_on()
        assert n.spec.unschedulable
        assert {
            "remediator.io/fencing:NoSchedule",
            "node.kubernetes.io/out-of-service:NoExecute",
        } <= taint_keys(n)
    elif after == "PowerOn":
        assert is_on()
        assert not n.spec.unschedulable
        assert not {
            k for k in taint_keys(n) if k.startswith(("remediator.io/", "node.kubernetes.io/out-of-service"))
        }
        assert status["facts"]["powerOnVerifiedAt"]
    else:
        assert n is None and not is_on()
    reasons = {e.reason for e in fence_events(lab, name)}
    assert set(phases) <= reasons  # an Event at every phase change
    blob = repr(status) + repr([e.message for e in fence_events(lab, name)])
    assert PASSWORD not in blob


@pytest.mark.parametrize("after", ["Keep", "PowerOn", "Remove"])
def test_ipmi_fence(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, ipmi: IpmiBmc, after: str
) -> None:
    node = make_node(IPMI_UUID)
    node.fencing([ipmi_level(ipmi.address)])
    with HostAgent(node, ipmi.is_on):
        name = create_fence(lab, node.name, afterFence=after)
        status = wait_done(lab, name)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"][0]["levelType"] == "ipmi" and status["attempts"][0]["result"] == "Succeeded"
    assert ipmi.is_on() is (after == "PowerOn")
    n = node.read()
    assert (n is None) is (after == "Remove")
    if after == "PowerOn":
        assert not n.spec.unschedulable and "remediator.io/fencing:NoSchedule" not in taint_keys(n)


def test_reboot_action_powers_back_on(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, ipmi: IpmiBmc
) -> None:
    node = make_node(IPMI_UUID)
    node.fencing([ipmi_level(ipmi.address)])
    with HostAgent(node, ipmi.is_on):
        name = create_fence(lab, node.name, action="Reboot", afterFence="PowerOn")
        status = wait_done(lab, name)
    assert status["phase"] == "Succeeded", status
    ops = [(a["operation"], a["result"]) for a in status["attempts"]]
    assert ops == [("PowerOff", "Succeeded"), ("PowerOn", "Succeeded")]
    wait_for(ipmi.is_on, 5, "host on")
