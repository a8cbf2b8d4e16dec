"""Faults and bad input: each ends with a clear status reason and nothing released unsafely."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import fence_controller as fc
from remediator.lab.bmc import IpmiBmc, ScriptedRedfishBmc
from tests.integration.conftest import IPMI_UUID, PASSWORD, RunningLab
from tests.integration.controller.conftest import (
    Controller,
    MakeNode,
    NodeUnderTest,
    create_fence,
    fence_events,
    fence_status,
    ipmi_level,
    redfish_level,
    resets,
    taint_keys,
    wait_done,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration


def _assert_untouched(node: NodeUnderTest) -> None:
    n = node.read()
    ours = {k for k in taint_keys(n) if k.startswith(("remediator.io/", "node.kubernetes.io/out-of-service"))}
    assert not n.spec.unschedulable and not ours, "the node must not have been changed"


def _assert_isolated_not_released(
    lab: RunningLab, node: NodeUnderTest, namespace: str | None = None, pod: str | None = None
) -> None:
    n = node.read()
    keys = taint_keys(n)
    assert n.spec.unschedulable and "remediator.io/fencing:NoSchedule" in keys
    # Nothing is evicted before the host is proven off.
    assert "remediator.io/fencing:NoExecute" not in keys
    assert "node.kubernetes.io/out-of-service:NoExecute" not in keys, "released before verified"
    if pod and namespace:
        assert any(p.metadata.name == pod for p in lab.core.list_namespaced_pod(namespace).items)


def _pod(lab: RunningLab, namespace: str, node: str) -> str:
    name = f"p-{uuid.uuid4().hex[:5]}"
    lab.core.create_namespaced_pod(
        namespace,
        {"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]}},
    )
    return name


def test_unknown_node(lab: RunningLab, controller: Controller) -> None:
    name = create_fence(lab, f"no-such-node-{uuid.uuid4().hex[:5]}")
    status = wait_done(lab, name)
    assert status["phase"] == "Failed" and status["reason"] == "NodeNotFound"
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Processing": "False", "FenceVerified": "False", "Succeeded": "False",
    }  # fmt: skip
    with contextlib.suppress(ApiException):
        client.CustomObjectsApi(lab.api).delete_cluster_custom_object(fc.GROUP, fc.VERSION, fc.PLURAL, name)


def test_node_without_node_fencing(lab: RunningLab, controller: Controller, make_node: MakeNode) -> None:
    node = make_node(str(uuid.uuid4()))
    status = wait_done(lab, create_fence(lab, node.name))
    assert status["phase"] == "Failed" and status["reason"] == "NoNodeFencing", status
    assert "NodeFencing" in status["message"]
    _assert_untouched(node)


def test_missing_secret(
    lab: RunningLab, controller: Controller, make_node: MakeNode, scripted: ScriptedRedfishBmc
) -> None:
    node = make_node(scripted.systems["1"].uuid)
    node.fencing([redfish_level(scripted.address(), credentialsSecret="no-such-secret")])
    status = wait_done(lab, create_fence(lab, node.name))
    assert status["phase"] == "Failed" and status["reason"] == "CredentialsNotFound", status
    assert "no-such-secret" in status["message"] and "does not exist" in status["message"]
    _assert_untouched(node)
    assert resets(scripted) == 0


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({"action": "Explode"}, "Unsupported value"),
        ({"afterFence": "Later"}, "Unsupported value"),
        ({"action": "Reboot", "afterFence": "Keep"}, "afterFence must be PowerOn or Remove"),
        ({"nodeName": "Not_A_Node"}, "spec.nodeName"),
        ({"recoveryTimeoutSeconds": 0}, "recoveryTimeoutSeconds"),
    ],
)
def test_invalid_spec_is_rejected_by_the_crd(
    lab: RunningLab, crds: None, spec: dict[str, Any], complaint: str
) -> None:
    body = {
        "apiVersion": f"{fc.GROUP}/{fc.VERSION}", "kind": "Fence", "metadata": {"generateName": "bad-"},
        "spec": {"nodeName": "some-node", **spec},
    }  # fmt: skip
    with pytest.raises(ApiException) as info:
        client.CustomObjectsApi(lab.api).create_cluster_custom_object(fc.GROUP, fc.VERSION, fc.PLURAL, body)
    assert info.value.status == 422 and complaint in info.value.body


def test_spec_is_immutable_and_defaults_apply(lab: RunningLab, crds: None) -> None:
    api = client.CustomObjectsApi(lab.api)
    body = {"apiVersion": f"{fc.GROUP}/{fc.VERSION}", "kind": "Fence", "metadata": {"generateName": "imm-"},
            "spec": {"nodeName": f"absent-{uuid.uuid4().hex[:5]}"}}  # fmt: skip
    created = api.create_cluster_custom_object(fc.GROUP, fc.VERSION, fc.PLURAL, body)
    name = created["metadata"]["name"]
    try:
        assert created["spec"] == {
            "nodeName": body["spec"]["nodeName"], "action": "Off", "afterFence": "Keep", "reason": "",
            "dryRun": False, "recoveryTimeoutSeconds": 600,
        }  # fmt: skip
        with pytest.raises(ApiException) as info:
            api.patch_cluster_custom_object(
                fc.GROUP, fc.VERSION, fc.PLURAL, name, {"spec": {"nodeName": "other"}}
            )
        assert info.value.status == 422 and "cannot be changed" in info.value.body
    finally:
        with contextlib.suppress(ApiException):
            api.delete_cluster_custom_object(fc.GROUP, fc.VERSION, fc.PLURAL, name)


def test_escalation_from_failing_first_level(
    lab: RunningLab,
    controller: Controller,
    make_node: MakeNode,
    secret: str,
    scripted: ScriptedRedfishBmc,
    ipmi: IpmiBmc,
) -> None:
    scripted.systems["1"].uuid = IPMI_UUID
    scripted.fail_status = 500
    node = make_node(IPMI_UUID)
    node.fencing([redfish_level(scripted.address(), attempts=2), ipmi_level(ipmi.address)])
    status = wait_done(lab, create_fence(lab, node.name))
    assert status["phase"] == "Succeeded", status
    tries = [(a["level"], a["levelType"], a["attempt"], a["result"]) for a in status["attempts"]]
    assert tries == [(0, "redfish", 1, "Failed"), (0, "redfish", 2, "Failed"), (1, "ipmi", 1, "Succeeded")]
    assert status["attempts"][0]["errorClass"] == "BmcProtocolError"
    assert status["facts"]["powerOffLevel"] == 1 and not ipmi.is_on()
    assert "AttemptFailed" in {e.reason for e in fence_events(lab, status and fence_name(lab, node.name))}


def fence_name(lab: RunningLab, node: str) -> str:
    [fence] = [f for f in fc.list_fences(lab.api) if f["spec"]["nodeName"] == node]
    return str(fence["metadata"]["name"])


def test_every_level_failing_leaves_node_isolated(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc,
    ipmi: IpmiBmc, namespace: str,
) -> None:  # fmt: skip
    scripted.fail_status = 503
    node = make_node(IPMI_UUID)
    ipmi.set_stuck(True)
    node.fencing([redfish_level(scripted.address()), ipmi_level(ipmi.address, powerTimeoutSeconds=1)])
    pod = _pod(lab, namespace, node.name)
    status = wait_done(lab, create_fence(lab, node.name))
    assert status["phase"] == "Failed" and status["reason"] == "AllLevelsFailed", status
    assert [a["errorClass"] for a in status["attempts"]] == ["BmcProtocolError", "PowerStateNotReached"]
    assert "left isolated, not released" in status["message"]
    _assert_isolated_not_released(lab, node, namespace, pod)
    assert not status["facts"].get("releasedAt") and ipmi.is_on()


def test_bmc_stuck_on(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    scripted.systems["1"].stuck = True
    node = make_node(scripted.systems["1"].uuid)
    node.fencing([redfish_level(scripted.address(), powerTimeoutSeconds=1, attempts=2)])
    status = wait_done(lab, create_fence(lab, node.name))
    assert status["phase"] == "Failed" and status["reason"] == "AllLevelsFailed"
    assert [(a["errorClass"], a["commandSent"]) for a in status["attempts"]] == [
        ("PowerStateNotReached", True)
    ] * 2
    assert "On" in status["attempts"][0]["message"] or "on" in status["attempts"][0]["message"]
    assert resets(scripted) == 2
    _assert_isolated_not_released(lab, node)


def test_identity_mismatch_fails_without_power_command(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    node = make_node(str(uuid.uuid4()))  # not the BMC's system
    node.fencing([redfish_level(scripted.address(), attempts=3)])
    status = wait_done(lab, create_fence(lab, node.name))
    assert status["phase"] == "Failed" and status["reason"] == "IdentityMismatch", status
    assert len(status["attempts"]) == 1 and resets(scripted) == 0
    _assert_isolated_not_released(lab, node)


def test_two_fences_for_one_node(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    scripted.systems["1"].power_delay_s = 1.5
    node = make_node(scripted.systems["1"].uuid)
    node.fencing([redfish_level(scripted.address())])
    first = create_fence(lab, node.name)
    wait_phase(lab, first, {"PoweringOff", "Verified", "Releasing", "Succeeded"})
    second = create_fence(lab, node.name)
    refused = wait_done(lab, second)
    assert refused["phase"] == "Failed" and refused["reason"] == "AlreadyFencing", refused
    assert first in refused["message"]
    assert wait_done(lab, first)["phase"] == "Succeeded"
    assert resets(scripted) == 1


def test_fence_deleted_midway_stops_at_a_safe_point(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    scripted.systems["1"].power_delay_s = 1.5
    node = make_node(scripted.systems["1"].uuid)
    node.fencing([redfish_level(scripted.address())])
    name = create_fence(lab, node.name)
    wait_for(
        lambda: (fence_status(lab, name).get("inFlight") or {}).get("commandSentAt"), 20, "power-off sent"
    )
    client.CustomObjectsApi(lab.api).delete_cluster_custom_object(fc.GROUP, fc.VERSION, fc.PLURAL, name)
    wait_for(lambda: fc.get_fence(lab.api, name) is None, 20, "Fence gone")
    [aborted] = [e for e in fence_events(lab, name) if e.reason == "Aborted"]
    assert "PoweringOff" in aborted.message and "nothing was released" in aborted.message
    assert "cordoned" in aborted.message
    node_events = lab.core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={node.name}"
    ).items
    assert any(e.reason == "FenceAborted" for e in node_events)
    _assert_isolated_not_released(lab, node)


def test_dry_run_changes_nothing(
    lab: RunningLab,
    controller: Controller,
    make_node: MakeNode,
    secret: str,
    scripted: ScriptedRedfishBmc,
    namespace: str,
) -> None:
    node = make_node(scripted.systems["1"].uuid)
    node.fencing(
        [redfish_level(scripted.address()), ipmi_level("ipmi://127.0.0.1:9", credentialsSecret="nope")]
    )
    _pod(lab, namespace, node.name)
    status = wait_done(lab, create_fence(lab, node.name, dryRun=True, afterFence="PowerOn"))
    assert status["phase"] == "Succeeded" and status["reason"] == "DryRunCompleted" and status["dryRun"]
    plan = "\n".join(status["plan"])
    assert "level 1 redfish" in plan and ": ok: reachable, power on" in plan
    assert "level 2 ipmi" in plan and "FAILS (CredentialsNotFound)" in plan
    assert "force-delete 1 pod(s)" in plan and "power the host on" in plan
    assert resets(scripted) == 0 and scripted.systems["1"].power_on
    assert not status["attempts"] and not status["facts"].get("isolatedAt")
    _assert_untouched(node)
    assert PASSWORD not in repr(status)


def test_dry_run_reports_identity_mismatch(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    node = make_node(str(uuid.uuid4()))
    node.fencing([redfish_level(scripted.address())])
    status = wait_done(lab, create_fence(lab, node.name, dryRun=True))
    assert status["phase"] == "Failed" and status["reason"] == "IdentityMismatch", status
    assert resets(scripted) == 0
    _assert_untouched(node)
