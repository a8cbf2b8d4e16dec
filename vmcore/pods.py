"""Manifests the controller creates: VM pods and their PodDisruptionBudgets (pure).

A VM pod holds the VM's resources on a node (requests = limits = the VM's CPU and memory), so the
real kube-scheduler, taints, tolerations, PDBs and evictions apply to VMs. It runs nothing privileged:
its container is a pause image as non-root with no capabilities; the node's handler runs the domain.
The VM's spec is frozen into the ``domain`` annotation at creation.
"""

from __future__ import annotations

import json
from typing import Any

from vmcore.api import (
    ANN_DOMAIN,
    API_VERSION,
    LABEL_MIGRATION,
    LABEL_ROLE,
    LABEL_VM,
    VM_KIND,
    DomainSpec,
)

LAUNCHER_IMAGE = "registry.k8s.io/pause:3.10"
HOSTNAME_LABEL = "kubernetes.io/hostname"


def owner_reference(domain: DomainSpec) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": VM_KIND,
        "name": domain.name,
        "uid": domain.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def vm_pod_manifest(
    domain: DomainSpec,
    pod_name: str,
    role: str,
    *,
    migration: str = "",
    target_node: str = "",
    avoid_node: str = "",
) -> dict[str, Any]:
    spec = domain.spec
    labels = {LABEL_VM: domain.name, LABEL_ROLE: role}
    if migration:
        labels[LABEL_MIGRATION] = migration
    resources = {"cpu": str(spec.cpu_cores), "memory": f"{spec.memory_mib}Mi"}
    node_selector = dict(spec.node_selector)
    if target_node:
        node_selector[HOSTNAME_LABEL] = target_node
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "runAsGroup": 65534,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "compute",
                "image": LAUNCHER_IMAGE,
                "resources": {"requests": resources, "limits": resources},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if avoid_node:
        pod_spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": HOSTNAME_LABEL, "operator": "NotIn", "values": [avoid_node]}
                            ]
                        }
                    ]
                }
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": domain.namespace,
            "labels": labels,
            "annotations": {ANN_DOMAIN: json.dumps(domain.to_json(), sort_keys=True)},
            "ownerReferences": [owner_reference(domain)],
        },
        "spec": pod_spec,
    }


def pdb_name(vm_name: str) -> str:
    return f"vm-{vm_name}"[:253]


def pdb_manifest(domain: DomainSpec, min_available: int = 1) -> dict[str, Any]:
    """Blocks every eviction of the VM's pods: a drain waits while vmcore migrates the VM instead.

    ``minAvailable`` is the number of VM pods that exist: 1, or 2 while a migration's target pod
    exists, so no pod of the VM is ever evictable. (An integer ``minAvailable`` is what the disruption
    controller can compute for pods owned by a custom resource; ``maxUnavailable`` needs the owner's
    scale subresource, and without it the budget fails to sync and lets evictions through once a
    second pod appears.)
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": pdb_name(domain.name),
            "namespace": domain.namespace,
            "labels": {LABEL_VM: domain.name},
            "ownerReferences": [owner_reference(domain)],
        },
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {LABEL_VM: domain.name}}},
    }
