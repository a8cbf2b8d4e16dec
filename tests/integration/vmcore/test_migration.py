"""Live migration against the real lab: VirtualMachineMigration end to end, drains, and faults.

Guests are real qemu processes under per-host libvirtds; the target pod is placed by the real
kube-scheduler; drains go through the policy/v1 Eviction API. Where a migration must stay open (a
timeout, a host lost mid-way) the guest boots a sector that dirties memory without end and the
migration's bandwidth is capped at 1 MiB/s, so it never converges on its own. After every test the
no-double-run check reads every host's libvirt.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator.lab import client as lab_client
from tests.integration.conftest import RunningLab
from tests.integration.vmcore.guests import memory_dirtier_image
from tests.integration.vmcore.test_vmcore import (
    _fence,
    create_vm,
    custom,
    get_vm,
    host_uris,
    ready_reason,
    running_on,
    wait_running,
)
from tests.waiting import wait_for
from vmcore import api as vapi
from vmcore.safety import check, running_domains

pytestmark = pytest.mark.integration


@pytest.fixture
def no_double_run(lab: RunningLab) -> Iterator[None]:
    yield
    assert check(host_uris(lab)) == []


@pytest.fixture(scope="module")
def dirtier(lab: RunningLab) -> str:
    return str(memory_dirtier_image(Path(lab.paths.root) / "vm-images"))


def create_migration(lab: RunningLab, namespace: str, vm: str, **spec: Any) -> str:
    name = f"mig-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": vapi.API_VERSION,
        "kind": vapi.MIGRATION_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vmName": vm, **spec},
    }
    custom(lab).create_namespaced_custom_object(
        vapi.GROUP, vapi.VERSION, namespace, vapi.MIGRATION_PLURAL, body
    )
    return name


def migration_status(lab: RunningLab, namespace: str, name: str) -> dict[str, Any]:
    mig: Any = custom(lab).get_namespaced_custom_object(
        vapi.GROUP, vapi.VERSION, namespace, vapi.MIGRATION_PLURAL, name
    )
    return dict(mig.get("status") or {})


def wait_finished(lab: RunningLab, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = migration_status(lab, namespace, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return wait_for(finished, timeout, f"migration {name} finished")


def defined_on(lab: RunningLab, domain: str) -> list[str]:
    """Hosts whose libvirt has the domain at all (running or only defined)."""
    import libvirt

    hosts = []
    for host, uri in host_uris(lab).items():
        conn = libvirt.open(uri)
        try:
            if domain in {d.name() for d in conn.listAllDomains(0)}:
                hosts.append(host)
        finally:
            conn.close()
    return sorted(hosts)


def vm_pods(lab: RunningLab, namespace: str, vm: str) -> list[client.V1Pod]:
    return list(lab.core.list_namespaced_pod(namespace, label_selector=f"{vapi.LABEL_VM}={vm}").items)


def busy_vm(lab: RunningLab, namespace: str, name: str, image: str) -> str:
    create_vm(
        lab,
        namespace,
        name,
        evictionStrategy="LiveMigrate",
        disks=[{"name": "boot", "image": {"path": image, "shared": True, "readOnly": True}}],
    )
    node = wait_running(lab, namespace, name)
    seen: set[bytes] = set()

    def dirtying() -> bool:
        """The guest runs the dirtier's loop: the word it writes at 0x10000 keeps changing."""
        import libvirt

        conn = libvirt.open(host_uris(lab)[node])
        try:
            word = conn.lookupByName(vapi.domain_name(namespace, name)).memoryPeek(
                0x10000, 2, libvirt.VIR_MEMORY_PHYSICAL
            )
        finally:
            conn.close()
        seen.add(bytes(word))
        return len(seen - {b"\0\0"}) >= 2

    wait_for(dirtying, 20, "the guest dirtying its memory")
    return node


def test_live_migration_moves_the_running_guest(lab: RunningLab, namespace: str, no_double_run: None) -> None:
    create_vm(lab, namespace, "mover", evictionStrategy="LiveMigrate")
    source = wait_running(lab, namespace, "mover")
    domain = vapi.domain_name(namespace, "mover")
    uid = get_vm(lab, namespace, "mover")["metadata"]["uid"]

    name = create_migration(lab, namespace, "mover")
    status = wait_finished(lab, namespace, name, timeout=30)
    assert status["phase"] == "Succeeded", status
    target = status["targetNode"]
    assert target != source and status["sourceNode"] == source
    assert status["startedAt"] <= status["endedAt"]
    assert status["transferredBytes"] > 0 and 0 <= status["downtimeMs"] < 2000
    # The same guest (same UUID, never restarted) now runs on the target only; the source forgot it.
    assert wait_running(lab, namespace, "mover") == target
    assert defined_on(lab, domain) == [target]
    assert get_vm(lab, namespace, "mover")["status"]["restarts"] == 0
    import libvirt

    conn = libvirt.open(host_uris(lab)[target])
    try:
        assert conn.lookupByName(domain).UUIDString() == uid
    finally:
        conn.close()
    wait_for(lambda: len(vm_pods(lab, namespace, "mover")) == 1, 20, "the source pod gone")

    # And back, to a named node.
    back = create_migration(lab, namespace, "mover", targetNode=source)
    status = wait_finished(lab, namespace, back, timeout=30)
    assert (status["phase"], status["targetNode"]) == ("Succeeded", source), status
    assert wait_running(lab, namespace, "mover") == source


def test_migration_timeout_aborts_and_the_vm_stays(
    lab: RunningLab, namespace: str, dirtier: str, no_double_run: None
) -> None:
    source = busy_vm(lab, namespace, "slow", dirtier)
    name = create_migration(lab, namespace, "slow", completionTimeoutSeconds=2, bandwidthMiBps=1)
    status = wait_finished(lab, namespace, name, timeout=40)
    assert (status["phase"], status["failureReason"]) == ("Failed", "Timeout"), status
    assert status["transferredBytes"] > 0
    assert wait_running(lab, namespace, "slow") == source
    vm = get_vm(lab, namespace, "slow")
    assert vm["status"].get("activeMigration") is None and vm["status"]["restarts"] == 0
    wait_for(lambda: len(vm_pods(lab, namespace, "slow")) == 1, 20, "the target pod gone")
    wait_for(lambda: defined_on(lab, vapi.domain_name(namespace, "slow")) == [source], 20, "target cleaned")


def test_migration_to_a_full_node_fails_cleanly(lab: RunningLab, namespace: str, no_double_run: None) -> None:
    create_vm(lab, namespace, "stuck", evictionStrategy="LiveMigrate")
    source = wait_running(lab, namespace, "stuck")
    full = next(h for h in sorted(host_uris(lab)) if h != source)
    allocatable = lab.core.read_node(full).status.allocatable
    lab.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": "filler"},
            "spec": {
                "nodeName": full,
                "containers": [
                    {
                        "name": "x",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": {"requests": {"cpu": allocatable["cpu"]}},
                    }
                ],
            },
        },
    )
    name = create_migration(lab, namespace, "stuck", targetNode=full)
    status = wait_finished(lab, namespace, name, timeout=30)
    assert (status["phase"], status["failureReason"]) == ("Failed", "TargetUnschedulable"), status
    assert "cpu" in status["message"]
    assert wait_running(lab, namespace, "stuck") == source
    wait_for(lambda: len(vm_pods(lab, namespace, "stuck")) == 1, 20, "the target pod gone")


def _cordon(lab: RunningLab, node: str, value: bool) -> None:
    lab.core.patch_node(node, {"spec": {"unschedulable": value or None}})


def _evict_all(lab: RunningLab, namespace: str, vm: str, node: str) -> list[int]:
    """Evict the VM's pods on ``node`` the way `kubectl drain` does (retrying 429) until none is left;
    returns the status of every eviction answer."""
    answers: list[int] = []

    def drained() -> bool:
        pods = [p for p in vm_pods(lab, namespace, vm) if p.spec.node_name == node]
        for pod in pods:
            if pod.metadata.deletion_timestamp:
                continue
            body = client.V1Eviction(
                metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=namespace)
            )
            try:
                lab.core.create_namespaced_pod_eviction(pod.metadata.name, namespace, body)
                answers.append(201)
            except ApiException as exc:
                if exc.status not in (404, 429):
                    raise
                answers.append(exc.status)
        return not pods

    wait_for(drained, 60, f"{vm}'s pods evicted from {node}", interval=0.5)
    return answers


@pytest.mark.parametrize(
    ("strategy", "disks", "moves_live"),
    [
        ("LiveMigrate", [], True),
        ("LiveMigrateIfPossible", [], True),
        ("LiveMigrateIfPossible", [{"name": "scratch", "ephemeral": {"sizeMiB": 4}}], False),
        ("None", [], False),
    ],
    ids=["LiveMigrate", "LiveMigrateIfPossible", "LiveMigrateIfPossible-ephemeral", "None"],
)
def test_drain(
    lab: RunningLab,
    namespace: str,
    no_double_run: None,
    strategy: str,
    disks: list[dict[str, Any]],
    moves_live: bool,
) -> None:
    create_vm(lab, namespace, "drained", evictionStrategy=strategy, disks=disks)
    node = wait_running(lab, namespace, "drained")
    # A drain sees what the API shows: the VM pod Running (a Pending pod ignores PDBs) and, for a VM
    # that moves live, its PDB looked at by the disruption controller (which allows 0 disruptions).
    wait_for(
        lambda: [p.status.phase for p in vm_pods(lab, namespace, "drained")] == ["Running"], 20, "pod Running"
    )
    if moves_live:
        policy = client.PolicyV1Api(lab.api)
        wait_for(
            lambda: any(
                p.status is not None and p.status.conditions and p.status.disruptions_allowed == 0
                for p in policy.list_namespaced_pod_disruption_budget(namespace).items
            ),
            20,
            "the VM's PDB processed",
        )
    _cordon(lab, node, True)
    try:
        answers = _evict_all(lab, namespace, "drained", node)
        new_node = wait_running(lab, namespace, "drained")
    finally:
        _cordon(lab, node, False)
    assert new_node != node
    vm = get_vm(lab, namespace, "drained")

    def migrations_done() -> Any:
        found: Any = custom(lab).list_namespaced_custom_object(
            vapi.GROUP, vapi.VERSION, namespace, vapi.MIGRATION_PLURAL
        )
        done = all(m.get("status", {}).get("phase") in ("Succeeded", "Failed") for m in found["items"])
        return found if done else None

    # The VM shows its new node a moment before its migration records Succeeded (two objects).
    migrations = wait_for(migrations_done, 20, "the drain's migrations to finish")
    phases = [m.get("status", {}).get("phase") for m in migrations["items"]]
    if moves_live:
        assert answers[0] == 429  # the PDB holds the eviction while vmcore migrates
        assert "Succeeded" in phases and vm["status"]["restarts"] == 0
        assert all(m["spec"]["reason"] == f"drain of {node}" for m in migrations["items"])
    else:
        assert answers[0] == 201  # evicted at once: the VM is shut down and started elsewhere
        assert phases == [] and vm["status"]["lastExit"]["node"] == node


def _fail(lab: RunningLab, host: str) -> None:
    lab_client.request(lab.paths, {"command": "fail", "host": host, "mode": "power-loss"})


def _heal(lab: RunningLab, host: str) -> None:
    lab_client.request(lab.paths, {"command": "heal", "host": host})
    uri = host_uris(lab)[host]
    wait_for(lambda: running_domains(uri) is not None, 60, f"{host}'s libvirt back")
    wait_for(
        lambda: kube_ready(lab, host),
        60,
        f"{host} Ready",
    )


def kube_ready(lab: RunningLab, node: str) -> bool:
    conditions = lab.core.read_node(node).status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _wait_transferring(lab: RunningLab, namespace: str, name: str) -> dict[str, Any]:
    def transferring() -> dict[str, Any] | None:
        status = migration_status(lab, namespace, name)
        return status if status.get("phase") == "Running" and status.get("transferredBytes", 0) > 0 else None

    return wait_for(transferring, 30, f"{name} transferring")


def test_target_host_dies_mid_migration(
    lab: RunningLab, namespace: str, dirtier: str, no_double_run: None
) -> None:
    source = busy_vm(lab, namespace, "orphaned", dirtier)
    name = create_migration(lab, namespace, "orphaned", completionTimeoutSeconds=120, bandwidthMiBps=1)
    target = _wait_transferring(lab, namespace, name)["targetNode"]
    _fail(lab, target)
    try:
        status = wait_finished(lab, namespace, name, timeout=30)
        assert status["phase"] == "Failed", status
        assert wait_running(lab, namespace, "orphaned") == source  # it never stopped
        assert get_vm(lab, namespace, "orphaned")["status"]["restarts"] == 0
    finally:
        _heal(lab, target)
    # The target comes back without the half-received guest.
    wait_for(
        lambda: (
            vapi.domain_name(namespace, "orphaned") not in (running_domains(host_uris(lab)[target]) or {""})
        ),
        30,
        "target clean",
    )
    assert running_on(lab, vapi.domain_name(namespace, "orphaned")) == [source]


def test_source_host_dies_mid_migration(
    lab: RunningLab, namespace: str, dirtier: str, no_double_run: None
) -> None:
    source = busy_vm(lab, namespace, "stranded", dirtier)
    domain = vapi.domain_name(namespace, "stranded")
    name = create_migration(lab, namespace, "stranded", completionTimeoutSeconds=120, bandwidthMiBps=1)
    _wait_transferring(lab, namespace, name)
    _fail(lab, source)
    fence = ""
    try:
        status = wait_finished(lab, namespace, name, timeout=40)
        assert (status["phase"], status["failureReason"]) == ("Failed", "SourceLost"), status
        wait_for(
            lambda: ready_reason(get_vm(lab, namespace, "stranded")) == "False/WaitingForFence",
            30,
            "WaitingForFence",
        )
        assert running_on(lab, domain) == []  # the half-received copy never runs
        fence = _fence(lab, source)
        new_node = wait_running(lab, namespace, "stranded", timeout=60)
        assert new_node != source
    finally:
        _heal(lab, source)
    wait_for(lambda: running_on(lab, domain) == [new_node], 30, "one copy")
    if fence:
        custom(lab).delete_cluster_custom_object("remediator.io", "v1alpha1", "fences", fence)
