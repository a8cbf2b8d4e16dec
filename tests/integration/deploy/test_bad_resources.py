"""Invalid objects of every kind, each rejected by the lab's real API server (schema, enums, bounds,
CEL rules) with a message that names the field at fault. Creates are dry runs; the immutability
rules need a real object to update."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from tests.integration.conftest import RunningLab
from tests.unit.test_crds_models import EXAMPLES

pytestmark = pytest.mark.integration

Change = Callable[[dict[str, Any]], None]


def setter(path: str, value: Any) -> Change:
    """Set (or with value ``...`` delete) the field at a dotted path; ``[n]`` indexes a list."""

    def change(obj: dict[str, Any]) -> None:
        parts = path.replace("[", ".[").split(".")
        node: Any = obj
        for part in parts[:-1]:
            node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
        last = parts[-1]
        key: Any = int(last[1:-1]) if last.startswith("[") else last
        if value is ...:
            del node[key]
        else:
            node[key] = value

    return change


REDFISH = {"type": "redfish", "address": "redfish://10.0.0.1/redfish/v1/Systems/1", "credentialsSecret": "s"}

# kind, what is wrong, the change, text the API server's message must contain (the field)
BAD: list[tuple[str, str, Change, str]] = [
    ("Fence", "no node", setter("spec.nodeName", ...), "spec.nodeName"),
    ("Fence", "node name not a DNS name", setter("spec.nodeName", "Bad_Node"), "spec.nodeName"),
    ("Fence", "unknown action", setter("spec.action", "Halt"), "spec.action"),
    ("Fence", "unknown afterFence", setter("spec.afterFence", "Later"), "spec.afterFence"),
    (
        "Fence",
        "reboot but keep off",
        lambda o: o["spec"].update(action="Reboot", afterFence="Keep"),
        "afterFence",
    ),
    ("Fence", "recovery timeout 0", setter("spec.recoveryTimeoutSeconds", 0), "spec.recoveryTimeoutSeconds"),
    ("Fence", "reason too long", setter("spec.reason", "x" * 2000), "spec.reason"),
    ("NodeFencing", "no levels", setter("spec.levels", []), "spec.levels"),
    ("NodeFencing", "unknown level type", setter("spec.levels[0].type", "snmp"), "spec.levels[0].type"),
    ("NodeFencing", "redfish without address", setter("spec.levels[0].address", ...), "address"),
    (
        "NodeFencing",
        "redfish without secret",
        setter("spec.levels[0].credentialsSecret", ...),
        "credentialsSecret",
    ),
    (
        "NodeFencing",
        "ipmi level, redfish address",
        setter("spec.levels[1].address", "redfish://x"),
        "ipmi://",
    ),
    ("NodeFencing", "machineAPI with address", setter("spec.levels[2].address", "ipmi://x"), "machineAPI"),
    (
        "NodeFencing",
        "call timeout too short",
        setter("spec.levels[0].callTimeoutSeconds", 0.1),
        "spec.levels[0].callTimeoutSeconds",
    ),
    ("NodeFencing", "too many attempts", setter("spec.levels[0].attempts", 11), "spec.levels[0].attempts"),
    (
        "NodeFencing",
        "unknown redfish auth",
        setter("spec.levels[0].redfishAuth", "digest"),
        "spec.levels[0].redfishAuth",
    ),
    (
        "NodeFencing",
        "insecure on ipmi",
        setter("spec.levels[1].insecureSkipVerify", True),
        "insecureSkipVerify",
    ),
    ("NodeFencing", "too many levels", setter("spec.levels", [REDFISH] * 9), "spec.levels"),
    ("NodeHealthCheck", "both thresholds", setter("spec.maxUnhealthy", 2), "minHealthy"),
    ("NodeHealthCheck", "no threshold", setter("spec.minHealthy", ...), "minHealthy"),
    ("NodeHealthCheck", "percentage above 100", setter("spec.minHealthy", "150%"), "spec.minHealthy"),
    ("NodeHealthCheck", "negative count", setter("spec.minHealthy", -1), "spec.minHealthy"),
    (
        "NodeHealthCheck",
        "unknown condition status",
        setter("spec.unhealthyConditions[0].status", "Maybe"),
        "spec.unhealthyConditions[0].status",
    ),
    (
        "NodeHealthCheck",
        "unparsable duration",
        setter("spec.unhealthyConditions[0].duration", "5 minutes"),
        "spec.unhealthyConditions[0].duration",
    ),
    (
        "NodeHealthCheck",
        "bad escalation timeout",
        setter("spec.escalationTimeout", "soon"),
        "spec.escalationTimeout",
    ),
    (
        "NodeHealthCheck",
        "unknown fence action",
        setter("spec.fenceTemplate.action", "Halt"),
        "spec.fenceTemplate.action",
    ),
    (
        "NodeHealthCheck",
        "In without values",
        setter("spec.selector.matchExpressions[0].values", ...),
        "spec.selector.matchExpressions[0]",
    ),
    (
        "NodeHealthCheck",
        "unknown selector operator",
        setter("spec.selector.matchExpressions[0].operator", "Like"),
        "spec.selector.matchExpressions[0].operator",
    ),
    ("VirtualMachine", "no vCPU", setter("spec.cpu.cores", 0), "spec.cpu.cores"),
    ("VirtualMachine", "too little memory", setter("spec.memory.guest", "16Mi"), "spec.memory"),
    ("VirtualMachine", "memory in Ti", setter("spec.memory.guest", "1Ti"), "spec.memory.guest"),
    (
        "VirtualMachine",
        "image and ephemeral disk",
        setter("spec.disks[1].image", {"path": "/a"}),
        "spec.disks[1]",
    ),
    (
        "VirtualMachine",
        "relative image path",
        setter("spec.disks[0].image.path", "images/a.qcow2"),
        "spec.disks[0].image.path",
    ),
    (
        "VirtualMachine",
        "image path with ..",
        setter("spec.disks[0].image.path", "/var/../etc/shadow"),
        "spec.disks[0].image.path",
    ),
    ("VirtualMachine", "duplicate disk names", setter("spec.disks[1].name", "root"), "spec.disks[1]"),
    (
        "VirtualMachine",
        "unknown image format",
        setter("spec.disks[0].image.format", "vmdk"),
        "spec.disks[0].image.format",
    ),
    (
        "VirtualMachine",
        "two pod-network interfaces",
        lambda o: o["spec"]["interfaces"].append({"name": "eth1"}),
        "spec",
    ),
    (
        "VirtualMachine",
        "bridge network without MAC",
        setter("spec.interfaces[0]", {"name": "eth0", "network": "br0", "binding": "bridge"}),
        "spec.interfaces[0]",
    ),
    (
        "VirtualMachine",
        "multicast MAC",
        setter("spec.interfaces[0].macAddress", "01:00:5e:00:00:01"),
        "spec.interfaces[0].macAddress",
    ),
    ("VirtualMachine", "unknown run strategy", setter("spec.runStrategy", "Sometimes"), "spec.runStrategy"),
    (
        "VirtualMachine",
        "unknown eviction strategy",
        setter("spec.evictionStrategy", "Ignore"),
        "spec.evictionStrategy",
    ),
    ("VirtualMachine", "priority out of range", setter("spec.priority", 5000), "spec.priority"),
    (
        "VirtualMachine",
        "bad PCI address",
        setter("spec.hostDevices", [{"name": "gpu", "pciAddress": "3b:00.0"}]),
        "spec.hostDevices[0].pciAddress",
    ),
    (
        "VirtualMachine",
        "unknown toleration operator",
        setter("spec.tolerations[0].operator", "Maybe"),
        "spec.tolerations[0].operator",
    ),
    ("VirtualMachineMigration", "no VM", setter("spec.vmName", ...), "spec.vmName"),
    (
        "VirtualMachineMigration",
        "timeout 0",
        setter("spec.completionTimeoutSeconds", 0),
        "spec.completionTimeoutSeconds",
    ),
    (
        "VirtualMachineMigration",
        "negative bandwidth",
        setter("spec.bandwidthMiBps", -1),
        "spec.bandwidthMiBps",
    ),
    ("VirtualMachineMigration", "reason too long", setter("spec.reason", "x" * 2000), "spec.reason"),
]

PLURALS = {
    "Fence": "fences",
    "NodeFencing": "nodefencings",
    "NodeHealthCheck": "nodehealthchecks",
    "VirtualMachine": "virtualmachines",
    "VirtualMachineMigration": "virtualmachinemigrations",
}


def create(
    api: client.ApiClient, obj: dict[str, Any], namespace: str, dry_run: bool = True
) -> dict[str, Any]:
    group, version = obj["apiVersion"].split("/")
    custom = client.CustomObjectsApi(api)
    plural = PLURALS[obj["kind"]]
    kwargs = {"dry_run": "All"} if dry_run else {}
    if group == "remediator.io":
        result: Any = custom.create_cluster_custom_object(group, version, plural, kube.body(obj), **kwargs)
    else:
        result = custom.create_namespaced_custom_object(
            group, version, namespace, plural, kube.body(obj), **kwargs
        )
    return dict(result)


def refusal(call: Callable[[], Any]) -> str:
    try:
        call()
    except ApiException as exc:
        assert exc.status == 422, exc.body
        return str(json.loads(exc.body)["message"])
    raise AssertionError("the API server accepted it")


def test_every_kind_has_bad_examples() -> None:
    assert {kind for kind, *_ in BAD} == set(EXAMPLES)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_good_example_is_accepted(lab: RunningLab, namespace: str, kind: str) -> None:
    obj = copy.deepcopy(EXAMPLES[kind])
    obj["metadata"]["name"] = f"good-{uuid.uuid4().hex[:8]}"
    create(lab.api, obj, namespace)


@pytest.mark.parametrize(("kind", "what", "change", "field"), BAD, ids=[f"{k}: {w}" for k, w, *_ in BAD])
def test_bad_resource_is_rejected_naming_the_field(
    lab: RunningLab, namespace: str, kind: str, what: str, change: Change, field: str
) -> None:
    obj = copy.deepcopy(EXAMPLES[kind])
    obj["metadata"]["name"] = f"bad-{uuid.uuid4().hex[:8]}"
    change(obj)
    message = refusal(lambda: create(lab.api, obj, namespace))
    assert field in message, f"{what}: {message}"


@pytest.mark.parametrize("kind", ["Fence", "VirtualMachineMigration"])
def test_spec_is_immutable(lab: RunningLab, namespace: str, kind: str) -> None:
    obj = copy.deepcopy(EXAMPLES[kind])
    obj["metadata"]["name"] = f"frozen-{uuid.uuid4().hex[:8]}"
    if kind == "Fence":
        obj["spec"]["nodeName"] = f"no-such-node-{uuid.uuid4().hex[:6]}"  # nobody acts on it
    created = create(lab.api, obj, namespace, dry_run=False)
    group, version = obj["apiVersion"].split("/")
    custom = client.CustomObjectsApi(lab.api)
    name = created["metadata"]["name"]
    try:
        if kind == "Fence":
            message = refusal(
                lambda: custom.patch_cluster_custom_object(
                    group, version, "fences", name, {"spec": {"reason": "changed"}}
                )
            )
        else:
            message = refusal(
                lambda: custom.patch_namespaced_custom_object(
                    group, version, namespace, PLURALS[kind], name, {"spec": {"completionTimeoutSeconds": 99}}
                )
            )
        assert "spec" in message and "cannot be changed" in message, message
    finally:
        if kind == "Fence":
            custom.delete_cluster_custom_object(group, version, "fences", name)
