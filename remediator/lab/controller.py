"""The remediation controller as part of the lab: its readiness check and the lab's default policy.

The lab's NodeHealthCheck ``lab-hosts`` watches every lab host with lab-sized durations: a node that
has been ``Ready=Unknown`` or ``Ready=False`` for 2 s (after kube-controller-manager's 10 s grace
period) is fenced with a Fence that powers it off, releases it and powers it back on. At most 49% of
the hosts may be remediated at once (``minHealthy: 51%``).
"""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from remediator.errors import LabError
from remediator.lab.hosts import LAB_HOST_LABEL
from remediator.lab.procs import ManagedProcess

LAB_POLICY = "lab-hosts"
LEADER_LEASE = "remediator-controller"


def lab_health_check() -> dict[str, Any]:
    return {
        "apiVersion": "remediator.io/v1alpha1",
        "kind": "NodeHealthCheck",
        "metadata": {"name": LAB_POLICY},
        "spec": {
            "selector": {"matchLabels": {LAB_HOST_LABEL: "true"}},
            "unhealthyConditions": [
                {"type": "Ready", "status": "Unknown", "duration": "2s"},
                {"type": "Ready", "status": "False", "duration": "2s"},
            ],
            "minHealthy": "51%",
            "fenceTemplate": {"action": "Off", "afterFence": "PowerOn"},
            "escalationTimeout": "2m",
            "stormCooldown": "30s",
            "healthyDelay": "10s",
        },
    }


def install_lab_health_check(api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    try:
        custom.create_cluster_custom_object(
            "remediator.io", "v1alpha1", "nodehealthchecks", kube.body(lab_health_check())
        )
    except ApiException as exc:
        if exc.status != 409:
            raise LabError("NodeHealthCheck", kube.api_error_message(exc)) from exc


def wait_for_leader(
    api: client.ApiClient, namespace: str, identity: str, proc: ManagedProcess, timeout: float = 60.0
) -> float:
    """Wait until the controller ``identity`` holds the leader Lease (it acts only then)."""
    leases = client.CoordinationV1Api(api)
    started = time.monotonic()
    while True:
        if not proc.alive():
            raise LabError("start controller", proc.exit_summary(), str(proc.log_path))
        try:
            lease = leases.read_namespaced_lease(LEADER_LEASE, namespace)
            if lease.spec is not None and lease.spec.holder_identity == identity:
                return time.monotonic() - started
        except ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() - started > timeout:
            raise LabError("start controller", f"no leader after {timeout:.0f}s", str(proc.log_path))
        time.sleep(0.1)
