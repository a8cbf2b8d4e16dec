"""Emulated lab hosts: one Kubernetes Node each, kept alive by its own ``kwok`` process.

A host's kwok runs with ``--manage-single-node`` and an identity of its own
(``remediator-lab:kwok:NAME``, in a group bound to a ClusterRole with what a kubelet may do; the
Node authorizer's ``system:node:`` identity cannot list nodes, which kwok needs), renews the node's
Lease, and reports pods bound to the node as running. Stopping that process is a *kubelet hang*:
the Lease goes stale and the real kube-controller-manager marks the node ``Ready=Unknown`` and
taints it ``unreachable``.
"""

from __future__ import annotations

import importlib.resources
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from remediator.errors import LabError
from remediator.lab.controlplane import ControlPlane, wait_until
from remediator.lab.procs import ManagedProcess, Supervisor
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers

LAB_HOST_LABEL = "remediator.io/lab-host"
KWOK_GROUP = "remediator-lab:kwok"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
KWOK_ROLE = "remediator-lab-kwok"
ZONES = ("lab-zone-a", "lab-zone-b", "lab-zone-c")

FAILURE_MODES = ("kubelet-hang", "power-loss", "partition", "bmc-down")


@dataclass
class LabHost:
    """One emulated bare-metal host and the state the lab keeps about it."""

    index: int
    name: str
    system_uuid: str
    node_ip: str
    pod_cidr: str
    kwok: ManagedProcess | None = None
    failure: str | None = None
    powered: bool = False
    bmc: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def new(cls, index: int, name: str) -> LabHost:
        return cls(
            index=index,
            name=name,
            system_uuid=str(uuid.uuid4()),
            node_ip=f"127.0.10.{index}",
            pod_cidr=f"10.244.{index}.0/24",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "systemUUID": self.system_uuid,
            "nodeIP": self.node_ip,
            "podCIDR": self.pod_cidr,
            "kwokPid": self.kwok.pid if self.kwok and self.kwok.alive() else None,
            "failure": self.failure,
            "power": "on" if self.powered else "off",
            "bmc": self.bmc,
            **{k: v for k, v in self.extra.items() if k.endswith("At")},
        }


class HostService(Protocol):
    """Something every lab host runs besides its kubelet (e.g. its libvirtd and VM handler).

    The lab calls ``boot`` when a host powers on (and at lab start), ``halt`` when it loses power
    (kill at once: a power cut gives no chance to shut down cleanly), ``describe`` for `lab status`,
    and ``stop`` once at lab teardown. A kubelet hang does not touch services: the host still runs.
    """

    name: str

    def boot(self, host: LabHost) -> None: ...

    def halt(self, host: LabHost) -> None: ...

    def describe(self, host: LabHost) -> dict[str, Any]: ...

    def stop(self) -> None: ...


def node_manifest(host: LabHost) -> dict[str, Any]:
    """The Node object a host registers, with realistic labels and hardware facts."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": host.name,
            "labels": {
                "kubernetes.io/hostname": host.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "lab.metal.small",
                "topology.kubernetes.io/region": "lab",
                "topology.kubernetes.io/zone": ZONES[(host.index - 1) % len(ZONES)],
                LAB_HOST_LABEL: "true",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"podCIDR": host.pod_cidr, "podCIDRs": [host.pod_cidr]},
        "status": node_status(host),
    }


def node_status(host: LabHost) -> dict[str, Any]:
    resources = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": host.node_ip},
            {"type": "Hostname", "address": host.name},
        ],
        "nodeInfo": {
            "machineID": host.system_uuid.replace("-", ""),
            "systemUUID": host.system_uuid,
            "bootID": str(uuid.uuid4()),
            "kernelVersion": "6.1.0-lab",
            "osImage": "Remediator lab host",
            "containerRuntimeVersion": "kwok://v0.8.0",
            "kubeletVersion": "v1.37.2",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
    }


def write_kwok_config(paths: LabPaths, timers: LabTimers) -> Path:
    """The kwok configuration shared by every host: lease duration and the lab's stages."""
    stages = importlib.resources.files("remediator.lab").joinpath("data/kwok-stages.yaml").read_text()
    # kwok applies its option defaults only when no configuration file is given, so every
    # option it needs is spelled out here.
    config = (
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
        "kind: KwokConfiguration\n"
        "options:\n"
        f"  nodeLeaseDurationSeconds: {timers.node_lease_duration}\n"
        "  nodeLeaseParallelism: 2\n"
        "  nodePlayStageParallelism: 2\n"
        "  podPlayStageParallelism: 4\n"
        "  podsOnNodeSyncParallelism: 1\n"
        "  enablePodsOnNodeSyncListPager: true\n"
        "  enablePodsOnNodeSyncStreamWatch: false\n"
        "  manageAllNodes: false\n"
        "  enableDebuggingHandlers: false\n"
        "  enableProfilingHandler: false\n"
        "  enableContentionProfiling: false\n"
        "---\n" + stages
    )
    path = paths.kwok / "kwok.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config)
    return path


def kwok_rbac() -> tuple[dict[str, Any], dict[str, Any]]:
    """The ClusterRole and binding that let the lab's kwok processes act as kubelets."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": KWOK_ROLE},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch", "update"]},
            {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch", "update"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch", "update"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch", "update"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "list", "watch", "create", "update", "patch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": KWOK_ROLE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": KWOK_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": KWOK_GROUP}],
    }
    return role, binding


class HostFleet:
    """Registers lab hosts as nodes and runs, stops and restarts their kwok processes."""

    def __init__(
        self,
        paths: LabPaths,
        supervisor: Supervisor,
        control_plane: ControlPlane,
        core: client.CoreV1Api,
        timers: LabTimers,
    ) -> None:
        self.paths = paths
        self.supervisor = supervisor
        self.control_plane = control_plane
        self.core = core
        self.timers = timers
        self.hosts: dict[str, LabHost] = {}
        self.services: list[HostService] = []
        self.kwok_config = write_kwok_config(paths, timers)

    def install_rbac(self, rbac: client.RbacAuthorizationV1Api) -> None:
        role, binding = kwok_rbac()
        for create, manifest in (
            (rbac.create_cluster_role, role),
            (rbac.create_cluster_role_binding, binding),
        ):
            try:
                create(kube.body(manifest))
            except ApiException as exc:
                if exc.status != 409:
                    raise LabError("kwok RBAC", f"creating {manifest['kind']} failed: {exc.reason}") from exc

    def add(self, host: LabHost) -> None:
        manifest = node_manifest(host)
        try:
            self.core.create_node(kube.body(manifest))
        except ApiException as exc:
            if exc.status != 409:
                raise LabError(f"register {host.name}", f"creating the Node failed: {exc.reason}") from exc
        # Some API versions drop status on create; set it explicitly through the status subresource.
        self.core.patch_node_status(host.name, {"status": node_status(host)})
        self.hosts[host.name] = host

    def start_kwok(self, host: LabHost) -> ManagedProcess:
        kubeconfig = self.control_plane.user_kubeconfig(
            f"kwok-{host.name}", f"{KWOK_GROUP}:{host.name}", [KWOK_GROUP]
        )
        argv = [
            str(self.control_plane.binaries["kwok"]),
            f"--kubeconfig={kubeconfig}",
            f"--config={self.kwok_config}",
            f"--manage-single-node={host.name}",
            f"--node-ip={host.node_ip}",
            f"--cidr={host.pod_cidr}",
            f"--node-lease-duration-seconds={self.timers.node_lease_duration}",
        ]
        host.kwok = self.supervisor.spawn(f"kwok-{host.name}", argv, self.paths.log(f"kwok-{host.name}"))
        return host.kwok

    def stop_kwok(self, host: LabHost) -> None:
        if host.kwok is not None:
            self.supervisor.kill(host.kwok)

    def boot(self, host: LabHost) -> None:
        """The host powered on: its services start, then its kubelet registers it as Ready."""
        for service in self.services:
            service.boot(host)
        if host.kwok is None or not host.kwok.alive():
            self.start_kwok(host)

    def halt(self, host: LabHost) -> None:
        """The host lost power: everything on it dies at once."""
        self.stop_kwok(host)
        for service in self.services:
            service.halt(host)

    def supervise(self) -> None:
        """Let each service restart what crashed on a powered host (about once a second)."""
        for host in self.hosts.values():
            for service in self.services:
                supervise = getattr(service, "supervise", None)
                if supervise is not None and host.powered:
                    supervise(host)

    def agents(self, host: LabHost) -> list[ManagedProcess]:
        """The host's processes that talk to the control plane (besides its kubelet)."""
        found: list[ManagedProcess] = []
        for service in self.services:
            agents = getattr(service, "agents", None)
            if agents is not None:
                found.extend(agents(host))
        return found

    def describe(self, host: LabHost) -> dict[str, Any]:
        described = host.to_json()
        for service in self.services:
            described[service.name] = service.describe(host)
        return described

    def stop_services(self) -> None:
        for service in self.services:
            service.stop()

    def wait_ready(self, host: LabHost, timeout: float = 60.0) -> float:
        """Wait until the node is Ready and kube-controller-manager has lifted its not-ready taint."""

        def ready() -> bool:
            node = self.core.read_node(host.name)
            taints = {key for key, _ in kube.node_taints(node)}
            return kube.node_ready_status(node) == "True" and NOT_READY_TAINT not in taints

        return wait_until(ready, step=f"{host.name} Ready", timeout=timeout, proc=host.kwok, interval=0.2)
