"""vmcore against the real lab: per-host libvirtds, real qemu guests, the real scheduler.

Lifecycle, runStrategy, a power loss without a fence (the VM stays down), the restart after a verified
fence, and a host that comes back holding its old domain (destroyed, never resumed). After every step
the no-double-run check reads every host's libvirt.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator.lab import client as lab_client
from tests.integration.conftest import RunningLab
from tests.waiting import wait_for
from vmcore import api as vapi
from vmcore.safety import check, running_domains

pytestmark = pytest.mark.integration


def host_uris(lab: RunningLab) -> dict[str, str]:
    hosts = lab_client.request(lab.paths, {"command": "status"})["lab"]["hosts"]
    return {h["name"]: h["vmcore"]["libvirtUri"] for h in hosts}


def custom(lab: RunningLab) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(lab.api)


def get_vm(lab: RunningLab, namespace: str, name: str) -> dict[str, Any]:
    vm: Any = custom(lab).get_namespaced_custom_object(
        vapi.GROUP, vapi.VERSION, namespace, vapi.VM_PLURAL, name
    )
    return dict(vm)


def ready_reason(vm: dict[str, Any]) -> str:
    for cond in vm.get("status", {}).get("conditions", []):
        if cond["type"] == "Ready":
            return f"{cond['status']}/{cond['reason']}"
    return ""


def create_vm(lab: RunningLab, namespace: str, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": vapi.API_VERSION,
        "kind": vapi.VM_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"memory": {"guest": "64Mi"}, **spec},
    }
    custom(lab).create_namespaced_custom_object(vapi.GROUP, vapi.VERSION, namespace, vapi.VM_PLURAL, body)


def running_on(lab: RunningLab, domain: str) -> list[str]:
    return sorted(h for h, uri in host_uris(lab).items() if domain in (running_domains(uri) or set()))


def wait_running(lab: RunningLab, namespace: str, name: str, timeout: float = 30) -> str:
    """Wait until the VM is Ready and its domain runs on exactly its node; returns the node."""

    def ok() -> str | None:
        vm = get_vm(lab, namespace, name)
        node = vm.get("status", {}).get("nodeName")
        if ready_reason(vm) == "True/Running" and running_on(lab, vapi.domain_name(namespace, name)) == [
            node
        ]:
            return str(node)
        return None

    return wait_for(ok, timeout, f"{namespace}/{name} running")


@pytest.fixture
def no_double_run(lab: RunningLab) -> Iterator[None]:
    yield
    assert check(host_uris(lab)) == []


def test_lifecycle_and_halted(lab: RunningLab, namespace: str, no_double_run: None) -> None:
    started = time.monotonic()
    create_vm(lab, namespace, "life")
    node = wait_running(lab, namespace, "life")
    assert time.monotonic() - started < 20
    pods = lab.core.list_namespaced_pod(namespace, label_selector=f"{vapi.LABEL_VM}=life").items
    assert [p.spec.node_name for p in pods] == [node]
    requests = pods[0].spec.containers[0].resources.requests
    assert requests == {"cpu": "1", "memory": "64Mi"}
    assert pods[0].spec.containers[0].security_context.privileged is False

    custom(lab).patch_namespaced_custom_object(
        vapi.GROUP, vapi.VERSION, namespace, vapi.VM_PLURAL, "life", {"spec": {"runStrategy": "Halted"}}
    )
    domain = vapi.domain_name(namespace, "life")
    wait_for(lambda: get_vm(lab, namespace, "life")["status"].get("phase") == "Stopped", 20, "stopped")
    assert running_on(lab, domain) == []
    assert get_vm(lab, namespace, "life")["status"]["domains"] == {}


def test_manual_starts_only_on_request(lab: RunningLab, namespace: str, no_double_run: None) -> None:
    create_vm(lab, namespace, "manual", runStrategy="Manual")
    wait_for(
        lambda: get_vm(lab, namespace, "manual").get("status", {}).get("phase") == "Stopped", 20, "stopped"
    )
    assert running_on(lab, vapi.domain_name(namespace, "manual")) == []
    custom(lab).patch_namespaced_custom_object(
        vapi.GROUP,
        vapi.VERSION,
        namespace,
        vapi.VM_PLURAL,
        "manual",
        {"metadata": {"annotations": {vapi.ANN_REQUESTED_STATE: "Running"}}},
    )
    wait_running(lab, namespace, "manual")


def test_invalid_spec_is_rejected_by_the_crd(lab: RunningLab, namespace: str) -> None:
    for spec in (
        {"memory": {"guest": "8Mi"}},
        {"runStrategy": "Sometimes"},
        {"interfaces": [{"name": "a", "network": "storage", "binding": "bridge"}]},
        {"disks": [{"name": "d", "image": {"path": "/x"}, "ephemeral": {}}]},
    ):
        with pytest.raises(ApiException) as info:
            create_vm(lab, namespace, f"bad-{uuid.uuid4().hex[:6]}", **spec)
        assert info.value.status == 422


def _fence(lab: RunningLab, node: str) -> str:
    """A Fence for ``node``; if no Fence controller answers, its verified status is written by hand."""
    name = f"vmtest-{uuid.uuid4().hex[:6]}"
    api = custom(lab)
    api.create_cluster_custom_object(
        "remediator.io",
        "v1alpha1",
        "fences",
        {
            "apiVersion": "remediator.io/v1alpha1",
            "kind": "Fence",
            "metadata": {"name": name},
            "spec": {"nodeName": node},
        },
    )
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        fence: Any = api.get_cluster_custom_object("remediator.io", "v1alpha1", "fences", name)
        if fence.get("status"):
            return name  # a real Fence controller drives it
        time.sleep(0.2)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.patch_cluster_custom_object_status(
        "remediator.io",
        "v1alpha1",
        "fences",
        name,
        {
            "status": {
                "phase": "Verified",
                "conditions": [
                    {
                        "type": "FenceVerified",
                        "status": "True",
                        "reason": "PowerOffVerified",
                        "message": "test",
                        "lastTransitionTime": now,
                    }
                ],
            }
        },
    )
    return name


def test_power_loss_waits_for_fence_then_restarts_elsewhere(
    lab: RunningLab, namespace: str, no_double_run: None
) -> None:
    create_vm(lab, namespace, "survivor", priority=5)
    node = wait_running(lab, namespace, "survivor")
    domain = vapi.domain_name(namespace, "survivor")
    lab_client.request(lab.paths, {"command": "fail", "host": node, "mode": "power-loss"})
    try:
        wait_for(
            lambda: ready_reason(get_vm(lab, namespace, "survivor")) == "False/WaitingForFence",
            30,
            "WaitingForFence",
        )
        assert running_on(lab, domain) == []  # down, and not started anywhere else
        fence = _fence(lab, node)
        started = time.monotonic()
        new_node = wait_running(lab, namespace, "survivor", timeout=60)
        assert new_node != node
        print(f"restart after verified fence: {time.monotonic() - started:.2f}s")
    finally:
        lab_client.request(lab.paths, {"command": "heal", "host": node})
    # The host comes back holding the old definition: destroyed, never resumed.
    uri = host_uris(lab)[node]
    wait_for(lambda: running_domains(uri) is not None, 60, f"{node}'s libvirt back")
    wait_for(
        lambda: get_vm(lab, namespace, "survivor")["status"]["domains"].keys() == {new_node}, 30, "one entry"
    )
    assert running_on(lab, domain) == [new_node]
    custom(lab).delete_cluster_custom_object("remediator.io", "v1alpha1", "fences", fence)
