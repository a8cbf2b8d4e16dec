"""NodeHealthCheck against the real lab: real kube-controller-manager detection, real BMCs, the real
controller (Fences and policies) as a subprocess. Each test owns its policy and deletes it."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator.kube import node_ready_status
from remediator.lab import client as lab_client
from tests.integration.conftest import RunningLab
from tests.integration.controller.conftest import Controller
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

GROUP, VERSION = "remediator.io", "v1alpha1"
LAB_SELECTOR = {"matchLabels": {"remediator.io/lab-host": "true"}}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class Policies:
    def __init__(self, lab: RunningLab) -> None:
        self.custom = client.CustomObjectsApi(lab.api)
        self.names: list[str] = []

    def create(self, duration: str = "2s", **spec: Any) -> str:
        name = f"nhc-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeHealthCheck",
            "metadata": {"name": name},
            "spec": {
                "selector": LAB_SELECTOR,
                "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "duration": duration}],
                "minHealthy": "51%",
                "fenceTemplate": {"action": "Off", "afterFence": "PowerOn"},
                **spec,
            },
        }
        self.custom.create_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", body)
        self.names.append(name)
        return name

    def status(self, name: str) -> dict[str, Any]:
        body: Any = self.custom.get_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", name)
        return dict(body.get("status") or {})

    def condition(self, name: str, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == kind), None)

    def fences(self, node: str, policy: str) -> list[dict[str, Any]]:
        """The Fences ``policy`` created for ``node`` (earlier tests leave theirs behind)."""
        selector = f"remediator.io/node={node},remediator.io/nodehealthcheck={policy}"
        items: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, "fences", label_selector=selector)
        return list(items["items"])

    def delete_all(self) -> None:
        for name in self.names:
            try:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def policies(lab: RunningLab, controller_process: Controller) -> Iterator[Policies]:
    assert controller_process.running()
    p = Policies(lab)
    yield p
    p.delete_all()


def _fail(lab: RunningLab, host: str, mode: str) -> float:
    reply = lab_client.request(lab.paths, {"command": "fail", "host": host, "mode": mode})
    return float(reply["at"])


def _heal_and_wait(lab: RunningLab, *hosts: str) -> None:
    for host in hosts:
        lab_client.request(lab.paths, {"command": "heal", "host": host})
    for host in hosts:

        def ready(name: str = host) -> bool:
            return node_ready_status(lab.core.read_node(name)) == "True"

        wait_for(ready, 60, f"{host} Ready")


def _wait_leases_renewed(lab: RunningLab, *hosts: str) -> None:
    """Until every host's node Lease has been renewed steadily (never older than 2 s) for 8 s:
    after kube-apiserver restarts, kwok's lease updates conflict on and off for a while, so a node
    being Ready -- or one fresh renewal -- does not mean its Lease stays fresh."""
    leases = client.CoordinationV1Api(lab.api)
    steady_since: list[float] = []

    def all_fresh() -> bool:
        now = datetime.now(UTC)
        for host in hosts:
            renewed = leases.read_namespaced_lease(host, "kube-node-lease").spec.renew_time
            if renewed is None or (now - renewed).total_seconds() >= 2:
                return False
        return True

    def steady() -> bool:
        if not all_fresh():
            steady_since.clear()
            return False
        if not steady_since:
            steady_since.append(time.monotonic())
        return time.monotonic() - steady_since[0] >= 8

    wait_for(steady, 120, f"the Leases of {', '.join(hosts)} renewed steadily", interval=0.25)


def _events(lab: RunningLab, name: str) -> list[str]:
    items = lab.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    return [f"{e.reason}: {e.message}" for e in items]


def test_policy_validation_is_enforced_by_the_crd(policies: Policies) -> None:
    for spec, field in (
        ({"minHealthy": 1, "maxUnhealthy": 1}, "exactly one of minHealthy or maxUnhealthy"),
        ({"minHealthy": "51%", "escalationTimeout": "soon"}, "spec.escalationTimeout"),
        ({"maxUnhealthy": "150%"}, "spec.maxUnhealthy"),
    ):
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "NodeHealthCheck",
            "metadata": {"name": f"bad-{uuid.uuid4().hex[:6]}"},
            "spec": spec,
        }
        with pytest.raises(ApiException) as err:
            policies.custom.create_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", body)
        assert err.value.status == 422
        assert field in err.value.body, err.value.body


def test_kubelet_hang_is_fenced_after_the_duration_and_recovers(lab: RunningLab, policies: Policies) -> None:
    host = "lab-host-1"
    # healthyDelay keeps the finished remediation in the policy's status long enough to look at.
    name = policies.create(duration="2s", healthyDelay="60s")
    wait_for(lambda: policies.status(name).get("observedNodes") == 3, 20, "the policy to observe 3 nodes")
    _fail(lab, host, "kubelet-hang")
    try:
        fence = wait_for(lambda: (f := policies.fences(host, name)) and f[0], 60, f"a Fence for {host}")
        node = lab.core.read_node(host)
        unknown_since = next(c for c in node.status.conditions if c.type == "Ready").last_transition_time
        created = _time(fence["metadata"]["creationTimestamp"])
        # Created once the condition held for the policy's duration, not before (second precision).
        assert (created - unknown_since).total_seconds() >= 1.0
        signals = json.loads(fence["metadata"]["annotations"]["remediator.io/signals"])
        assert signals and signals[0].startswith("Ready=Unknown for ")
        done = wait_for(lambda: _finished(policies, fence["metadata"]["name"]), 90, "the Fence to finish")
        assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
        off = next(a for a in done["status"]["attempts"] if a["operation"] == "PowerOff")
        assert off["commandSent"] is True  # the host was still powered: it had to be switched off
        wait_for(lambda: node_ready_status(lab.core.read_node(host)) == "True", 60, f"{host} Ready again")

        def recorded() -> dict[str, Any] | None:
            status = policies.status(name)
            rems = status.get("remediations") or []
            return status if rems and rems[0]["outcome"] == "Succeeded" else None

        status = wait_for(recorded, 30, "the policy to record the outcome")
        assert status["remediations"][0]["fence"] == fence["metadata"]["name"]
        assert any(e.startswith("FenceCreated: node lab-host-1") for e in _events(lab, name))
    finally:
        _heal_and_wait(lab, host)


def test_power_loss_is_confirmed_off_and_released_without_a_power_command(
    lab: RunningLab, policies: Policies
) -> None:
    host = "lab-host-2"
    policy = policies.create(duration="1s")
    _fail(lab, host, "power-loss")
    try:
        fence = wait_for(lambda: (f := policies.fences(host, policy)) and f[0], 60, f"a Fence for {host}")
        done = wait_for(lambda: _finished(policies, fence["metadata"]["name"]), 90, "the Fence to finish")
        assert done["status"]["phase"] == "Succeeded"
        off = next(a for a in done["status"]["attempts"] if a["operation"] == "PowerOff")
        # The BMC already reported the host off: nothing was sent, the state was still read back.
        assert off["commandSent"] is False and off["result"] == "Succeeded"
        facts = done["status"]["facts"]
        assert _time(facts["releasedAt"]) >= _time(facts["powerOffVerifiedAt"])
    finally:
        _heal_and_wait(lab, host)


def test_storm_holds_back_remediation_and_is_reported(lab: RunningLab, policies: Policies) -> None:
    hosts = ("lab-host-2", "lab-host-3")
    # The cooldown covers the heal below: one host is back a moment before the other, which ends
    # the storm while the other still looks unhealthy.
    # A duration long enough for both nodes to turn Unknown before either counts as unhealthy: their
    # leases lapse up to a renew interval apart, more on a loaded machine.
    name = policies.create(duration="5s", stormCooldown="60s")
    wait_for(lambda: policies.status(name).get("observedNodes") == 3, 20, "the policy to observe 3 nodes")
    for host in hosts:
        _fail(lab, host, "kubelet-hang")
    try:
        storm = wait_for(
            lambda: (c := policies.condition(name, "StormActive")) and c["status"] == "True" and c,
            60,
            "StormActive",
        )
        assert "of 3 nodes unhealthy" in storm["message"]
        # Once both have been unhealthy for the whole duration, the message says so.
        wait_for(
            lambda: (
                "2 of 3 nodes unhealthy" in (policies.condition(name, "StormActive") or {}).get("message", "")
            ),
            30,
            "both nodes counted unhealthy",
        )
        # Both nodes stay unhealthy past the duration and no Fence appears for either.
        wait_for(lambda: policies.status(name).get("unhealthyNodes") == 2, 30, "2 unhealthy nodes")
        assert policies.fences("lab-host-2", name) == [] and policies.fences("lab-host-3", name) == []
        assert any(e.startswith("StormActive:") for e in _events(lab, name))
    finally:
        _heal_and_wait(lab, *hosts)
    ended = wait_for(
        lambda: (c := policies.condition(name, "StormActive")) and c["status"] == "False" and c,
        30,
        "the storm to end",
    )
    # The cooldown is under way and the condition says until when.
    assert ended["reason"] == "CoolingDown" and "remediation resumes at" in ended["message"]
    assert policies.fences("lab-host-2", name) == [] and policies.fences("lab-host-3", name) == []


def _unknown_for(lab: RunningLab, host: str, seconds: float) -> bool:
    node = lab.core.read_node(host)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    if ready.status != "Unknown":
        return False
    return (datetime.now(UTC) - ready.last_transition_time).total_seconds() >= seconds


def _finished(policies: Policies, fence: str) -> dict[str, Any] | None:
    body: Any = policies.custom.get_cluster_custom_object(GROUP, VERSION, "fences", fence)
    return body if body.get("status", {}).get("phase") in ("Succeeded", "Failed") else None


def test_flapping_node_is_not_fenced(lab: RunningLab, policies: Policies) -> None:
    host = "lab-host-3"
    name = policies.create(duration="10s")
    wait_for(lambda: policies.status(name).get("observedNodes") == 3, 20, "the policy to observe 3 nodes")
    # Two unhealthy spells of 5 s and a little more each: over 10 s in all, but never 10 s in a row.
    for _ in range(2):
        _fail(lab, host, "kubelet-hang")
        try:
            wait_for(lambda: _unknown_for(lab, host, 5.0), 40, f"{host} Unknown for 5 s")
        finally:
            _heal_and_wait(lab, host)
    assert policies.fences(host, name) == []
    assert policies.status(name).get("remediations") == []


def test_paused_policy_waits_and_acts_once_unpaused(lab: RunningLab, policies: Policies) -> None:
    host = "lab-host-3"
    name = policies.create(duration="1s", pause=True)
    _fail(lab, host, "kubelet-hang")
    try:
        wait_for(lambda: _unknown_for(lab, host, 3.0), 40, f"{host} Unknown for 3 s")
        wait_for(lambda: policies.status(name).get("unhealthyNodes") == 1, 20, "the policy to see it")
        assert policies.fences(host, name) == []
        disabled = policies.condition(name, "Disabled")
        assert disabled is not None and disabled["status"] == "True" and disabled["reason"] == "Paused"
        policies.custom.patch_cluster_custom_object(
            GROUP, VERSION, "nodehealthchecks", name, {"spec": {"pause": False}}
        )
        fence = wait_for(lambda: (f := policies.fences(host, name)) and f[0], 20, "a Fence once unpaused")
        done = wait_for(lambda: _finished(policies, fence["metadata"]["name"]), 90, "the Fence to finish")
        assert done["status"]["phase"] == "Succeeded"
    finally:
        _heal_and_wait(lab, host)


def test_control_plane_outage_fences_nothing(
    lab: RunningLab, policies: Policies, controller_process: Controller
) -> None:
    """kube-apiserver goes away for longer than the node grace period and comes back: every node's
    heartbeats stopped reaching it meanwhile, but that is no reason to fence anything."""
    name = policies.create(duration="1s")
    wait_for(lambda: policies.status(name).get("observedNodes") == 3, 20, "the policy to observe 3 nodes")
    down = lab.timers.node_monitor_grace_period + 5
    reply = lab_client.request(
        lab.paths, {"command": "control-plane-outage", "seconds": down}, timeout=down + 120
    )
    assert "kube-apiserver was down" in reply["message"]
    for host in ("lab-host-1", "lab-host-2", "lab-host-3"):
        wait_for(lambda h=host: node_ready_status(lab.core.read_node(h)) == "True", 90, f"{host} Ready")  # type: ignore[misc]
    _wait_leases_renewed(lab, "lab-host-1", "lab-host-2", "lab-host-3")
    # The controller's leader may have given up its Lease during the outage and exited (by design:
    # it cannot know whether another replica took over); in a cluster its Deployment restarts it.
    if not controller_process.running():
        controller_process.start()
    wait_for(lambda: policies.status(name).get("healthyNodes") == 3, 60, "the policy to see 3 healthy nodes")
    for host in ("lab-host-1", "lab-host-2", "lab-host-3"):
        assert policies.fences(host, name) == []


def test_lease_fast_path_fences_a_silent_node_before_its_condition_would(
    lab: RunningLab, policies: Policies, controller_process: Controller
) -> None:
    host = "lab-host-3"
    controller_process.stop()
    controller_process.start(extra=["--lease-fast-path"])
    try:
        # Ready=Unknown would take kube-controller-manager's grace period plus 10 minutes: within the
        # wait below only the stale Lease (renewed every second in the lab) can make the node unhealthy.
        # 5 s: a margin over the lab's 1 s renewals for a loaded machine (the fast path's trade-off).
        # Every host's Lease must be live first, or the policy rightly fences a host that is not failed.
        _wait_leases_renewed(lab, "lab-host-1", "lab-host-2", "lab-host-3")
        name = policies.create(duration="10m", leaseStaleAfter="5s")
        wait_for(lambda: policies.status(name).get("observedNodes") == 3, 20, "the policy to observe 3 nodes")
        failed_at = _fail(lab, host, "kubelet-hang")
        try:
            fence = wait_for(lambda: (f := policies.fences(host, name)) and f[0], 60, f"a Fence for {host}")
            signals = json.loads(fence["metadata"]["annotations"]["remediator.io/signals"])
            assert signals and all(s.startswith("Lease not renewed for ") for s in signals), signals
            # Not before the Lease was 5 s stale (it was renewed at most a second before the hang;
            # creationTimestamp has whole seconds).
            created = _time(fence["metadata"]["creationTimestamp"]).timestamp()
            assert created >= failed_at + 5 - 1 - 1
            done = wait_for(lambda: _finished(policies, fence["metadata"]["name"]), 90, "the Fence to finish")
            assert done["status"]["phase"] == "Succeeded", done["status"].get("message")
        finally:
            _heal_and_wait(lab, host)
    finally:
        controller_process.stop()
        controller_process.start()
