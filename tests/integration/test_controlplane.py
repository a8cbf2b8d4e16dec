"""The lab's control plane is the real thing: real API server, real CRDs, real scheduler, real
kube-controller-manager reacting to a host whose kubelet hangs."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator.kube import node_name, node_ready_status
from remediator.lab import client as lab_client
from remediator.lab.hosts import LAB_HOST_LABEL
from tests.integration.conftest import LAB_HOSTS, RunningLab
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def test_api_server_reports_the_pinned_version(lab: RunningLab) -> None:
    info = client.VersionApi(lab.api).get_code()
    assert info.git_version == "v1.37.2"
    assert (info.major, info.minor) == ("1", "37")


def test_crud_through_the_kubernetes_client(lab: RunningLab, namespace: str) -> None:
    core = lab.core
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cm"}, "data": {"k": "v1"}})
    core.patch_namespaced_config_map("cm", namespace, {"data": {"k": "v2"}})
    assert core.read_namespaced_config_map("cm", namespace).data == {"k": "v2"}
    core.delete_namespaced_config_map("cm", namespace)
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("cm", namespace)
    assert err.value.status == 404


def test_a_crd_is_applied_and_served(lab: RunningLab, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:6]}.remediator.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext = client.ApiextensionsV1Api(lab.api)
    ext.create_custom_resource_definition(crd)
    try:

        def established() -> bool:
            conditions = ext.read_custom_resource_definition(f"widgets.{group}").status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(established, 30, "the CRD to be established")
        custom = client.CustomObjectsApi(lab.api)
        body = {
            "apiVersion": f"{group}/v1alpha1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 3},
        }
        # Discovery of a new group can lag Established by a moment; retry until it is served.
        wait_for(
            lambda: _try_create(custom, group, namespace, body), 30, "the custom resource to be accepted"
        )
        got = custom.get_namespaced_custom_object(group, "v1alpha1", namespace, "widgets", "w")
        assert got["spec"] == {"size": 3}
        # The schema is enforced by the real API server.
        bad = {**body, "metadata": {"name": "bad"}, "spec": {"size": 0}}
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object(group, "v1alpha1", namespace, "widgets", bad)
        assert err.value.status == 422
        assert "spec.size" in err.value.body
    finally:
        ext.delete_custom_resource_definition(f"widgets.{group}")


def _try_create(custom: client.CustomObjectsApi, group: str, namespace: str, body: dict[str, Any]) -> bool:
    try:
        custom.create_namespaced_custom_object(group, "v1alpha1", namespace, "widgets", body)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def test_every_lab_host_is_a_ready_node_with_identity(lab: RunningLab) -> None:
    nodes = lab.core.list_node(label_selector=f"{LAB_HOST_LABEL}=true").items
    assert sorted(node_name(n) for n in nodes) == [f"lab-host-{i}" for i in range(1, LAB_HOSTS + 1)]
    uuids = set()
    for node in nodes:
        assert node_ready_status(node) == "True"
        assert node.metadata.labels["kubernetes.io/hostname"] == node.metadata.name
        assert node.metadata.labels["topology.kubernetes.io/zone"].startswith("lab-zone-")
        assert node.status.capacity["cpu"] == "8"
        uuids.add(node.status.node_info.system_uuid)
    assert len(uuids) == LAB_HOSTS
    assert all(len(u) == 36 for u in uuids)


def test_kwok_renews_each_node_lease(lab: RunningLab) -> None:
    leases = client.CoordinationV1Api(lab.api)
    first = leases.read_namespaced_lease("lab-host-1", "kube-node-lease").spec.renew_time
    renewed = wait_for(
        lambda: leases.read_namespaced_lease("lab-host-1", "kube-node-lease").spec.renew_time > first or None,
        timeout=lab.timers.node_lease_duration * 2,
        what="the lease of lab-host-1 to be renewed",
    )
    assert renewed


def test_the_real_scheduler_places_a_pod_and_kwok_runs_it(lab: RunningLab, namespace: str) -> None:
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "containers": [
                {"name": "c", "image": "registry.invalid/pause:1", "resources": {"requests": {"cpu": "1"}}}
            ],
            "nodeSelector": {LAB_HOST_LABEL: "true"},
        },
    }
    lab.core.create_namespaced_pod(namespace, pod)
    running = wait_for(
        lambda: (p := lab.core.read_namespaced_pod("p", namespace)).status.phase == "Running" and p,
        30,
        "the pod to run",
    )
    assert running.spec.node_name.startswith("lab-host-")
    assert running.status.pod_ip and running.status.pod_ip.startswith("10.244.")


def test_a_second_lab_up_reuses_the_running_lab(lab: RunningLab) -> None:
    before = lab.paths.read_status()
    status = lab_client.start(lab.paths, LAB_HOSTS, lab.timers)
    assert status["reused"] is True
    assert status["pid"] == before["pid"]


def test_kubelet_hang_makes_kcm_mark_the_node_unknown_and_taint_it(lab: RunningLab) -> None:
    host = "lab-host-3"
    core = lab.core
    reply = lab_client.request(lab.paths, {"command": "fail", "host": host, "mode": "kubelet-hang"})
    failed_at = time.monotonic()
    try:
        assert reply["changed"] is True

        def unknown_and_tainted() -> bool:
            node = core.read_node(host)
            taints = {(t.key, t.effect) for t in node.spec.taints or []}
            return (
                node_ready_status(node) == "Unknown"
                and (
                    "node.kubernetes.io/unreachable",
                    "NoExecute",
                )
                in taints
            )

        grace = lab.timers.node_monitor_grace_period
        wait_for(unknown_and_tainted, grace * 3, f"{host} to become Ready=Unknown and tainted unreachable")
        detected = time.monotonic() - failed_at
        # Detection is the controller manager's, not ours: it cannot be earlier than the grace
        # period minus one lease renewal interval.
        assert detected >= grace - lab.timers.lease_renew_interval - 0.5
        node = core.read_node(host)
        ready = next(c for c in node.status.conditions if c.type == "Ready")
        assert ready.reason == "NodeStatusUnknown"
        # The other hosts are unaffected.
        assert node_ready_status(core.read_node("lab-host-1")) == "True"
    finally:
        lab_client.request(lab.paths, {"command": "heal", "host": host})

    def healthy_again() -> bool:
        node = core.read_node(host)
        keys = {t.key for t in node.spec.taints or []}
        return node_ready_status(node) == "True" and "node.kubernetes.io/unreachable" not in keys

    wait_for(healthy_again, 60, f"{host} to be Ready again after heal")


def test_unknown_host_and_mode_are_refused_clearly(lab: RunningLab) -> None:
    with pytest.raises(Exception, match=r"unknown host 'lab-host-99' \(hosts: lab-host-1"):
        lab_client.request(lab.paths, {"command": "fail", "host": "lab-host-99", "mode": "kubelet-hang"})
    with pytest.raises(Exception, match="unknown failure mode 'meteor'"):
        lab_client.request(lab.paths, {"command": "fail", "host": "lab-host-1", "mode": "meteor"})
