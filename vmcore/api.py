"""vmcore's API: names, labels and annotations, and typed models of VirtualMachine objects.

Pure: no Kubernetes client, no kopf, no libvirt. The controller, the handler, the CLI and the tests all
read objects through :func:`parse_vm_spec` / :func:`parse_vm_status` and never poke at raw dicts
elsewhere. The CRDs in ``crds/vmcore-*.yaml`` validate (and default) what the API server accepts; the
parsers here check again, because the handler must not trust a pod annotation blindly.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from vmcore.errors import VmSpecError

GROUP = "vmcore.remediator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
VM_KIND = "VirtualMachine"
VM_PLURAL = "virtualmachines"
MIGRATION_KIND = "VirtualMachineMigration"
MIGRATION_PLURAL = "virtualmachinemigrations"

#: Every VM pod carries the VM's name in this label (and the PDB selects on it).
LABEL_VM = f"{GROUP}/vm"
#: "launcher" (the pod that runs the VM) or "target" (the receiving end of a migration).
LABEL_ROLE = f"{GROUP}/role"
ROLE_LAUNCHER = "launcher"
ROLE_TARGET = "target"
#: On target pods: the VirtualMachineMigration it was created for.
LABEL_MIGRATION = f"{GROUP}/migration"
#: The VM's spec and identity, frozen into the pod at creation (what the handler runs).
ANN_DOMAIN = f"{GROUP}/domain"
#: Target handler -> controller: the target is prepared; the value is its libvirt URI.
ANN_TARGET_URI = f"{GROUP}/target-uri"
#: Controller -> source handler: migrate now (JSON :class:`MigrateRequest`).
ANN_MIGRATE = f"{GROUP}/migrate"
#: Source handler -> controller: how the migration goes (JSON :class:`MigrationReport`).
ANN_MIGRATION_STATE = f"{GROUP}/migration-state"
#: On VMs with runStrategy Manual: "Running" or "Stopped", consumed by the controller.
ANN_REQUESTED_STATE = f"{GROUP}/requested-state"

RUN_STRATEGIES = ("Always", "RerunOnFailure", "Manual", "Halted")
EVICTION_STRATEGIES = ("LiveMigrate", "LiveMigrateIfPossible", "None")

#: Domain states a handler reports in ``status.domains[node].state``.
DOMAIN_STARTING = "Starting"
DOMAIN_INCOMING = "Incoming"
DOMAIN_RUNNING = "Running"
DOMAIN_PAUSED = "Paused"
DOMAIN_MIGRATING = "Migrating"
DOMAIN_STOPPED = "Stopped"  # the guest shut itself down
DOMAIN_FAILED = "Failed"  # crashed, or lost (it had started and is gone)
TERMINAL_DOMAIN_STATES = (DOMAIN_STOPPED, DOMAIN_FAILED)

_QUANTITY = re.compile(r"^([1-9][0-9]{0,6})(Mi|Gi)$")
_MAC = re.compile(r"^[0-9a-f][02468ace](:[0-9a-f]{2}){5}$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def parse_memory_mib(quantity: str) -> int:
    """``128Mi`` -> 128, ``2Gi`` -> 2048."""
    match = _QUANTITY.match(quantity)
    if not match:
        raise VmSpecError(f"memory {quantity!r} is not a quantity in Mi or Gi (e.g. 128Mi)")
    value = int(match.group(1))
    return value * 1024 if match.group(2) == "Gi" else value


@dataclass(frozen=True)
class Disk:
    name: str
    kind: str  # "image" or "ephemeral"
    path: str = ""
    shared: bool = False
    image_format: str = "raw"
    read_only: bool = False
    size_mib: int = 0


@dataclass(frozen=True)
class Interface:
    name: str
    network: str = "pod"
    binding: str = "masquerade"
    mac_address: str | None = None
    model: str = "virtio"


@dataclass(frozen=True)
class HostDevice:
    name: str
    pci_address: str


@dataclass(frozen=True)
class VmSpec:
    """The parts of a VirtualMachine's spec that vmcore acts on."""

    cpu_cores: int = 1
    memory_mib: int = 128
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    host_devices: tuple[HostDevice, ...] = ()
    run_strategy: str = "Always"
    eviction_strategy: str = "LiveMigrateIfPossible"
    priority: int = 0
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The spec in the CRD's shape (what :func:`parse_vm_spec` reads back)."""
        out: dict[str, Any] = {
            "cpu": {"cores": self.cpu_cores},
            "memory": {"guest": f"{self.memory_mib}Mi"},
            "runStrategy": self.run_strategy,
            "evictionStrategy": self.eviction_strategy,
            "priority": self.priority,
        }
        if self.disks:
            out["disks"] = [_disk_json(d) for d in self.disks]
        if self.interfaces:
            out["interfaces"] = [
                {
                    "name": i.name,
                    "network": i.network,
                    "binding": i.binding,
                    "model": i.model,
                    **({"macAddress": i.mac_address} if i.mac_address else {}),
                }
                for i in self.interfaces
            ]
        if self.host_devices:
            out["hostDevices"] = [{"name": h.name, "pciAddress": h.pci_address} for h in self.host_devices]
        if self.node_selector:
            out["nodeSelector"] = dict(self.node_selector)
        if self.tolerations:
            out["tolerations"] = [dict(t) for t in self.tolerations]
        return out


def _disk_json(disk: Disk) -> dict[str, Any]:
    if disk.kind == "ephemeral":
        return {"name": disk.name, "ephemeral": {"sizeMiB": disk.size_mib}}
    return {
        "name": disk.name,
        "image": {
            "path": disk.path,
            "shared": disk.shared,
            "format": disk.image_format,
            "readOnly": disk.read_only,
        },
    }


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise VmSpecError(f"{what} must be an object")
    return value


def _items(value: object, what: str) -> Sequence[Mapping[str, Any]]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise VmSpecError(f"{what} must be a list of objects")
    return value


def _parse_disk(raw: Mapping[str, Any]) -> Disk:
    name = str(raw.get("name", ""))
    if not _NAME.match(name):
        raise VmSpecError(f"disk name {name!r} is invalid")
    image, ephemeral = raw.get("image"), raw.get("ephemeral")
    if (image is None) == (ephemeral is None):
        raise VmSpecError(f"disk {name}: exactly one of image and ephemeral")
    if image is not None:
        img = _mapping(image, f"disk {name}.image")
        path = str(img.get("path", ""))
        if not path.startswith("/") or "/../" in path or path.endswith("/..") or "\x00" in path:
            raise VmSpecError(f"disk {name}: image path {path!r} must be absolute and without '..'")
        fmt = str(img.get("format", "raw"))
        if fmt not in ("raw", "qcow2"):
            raise VmSpecError(f"disk {name}: format {fmt!r} is not raw or qcow2")
        return Disk(
            name,
            "image",
            path=path,
            shared=bool(img.get("shared", False)),
            image_format=fmt,
            read_only=bool(img.get("readOnly", False)),
        )
    size = int(_mapping(ephemeral, f"disk {name}.ephemeral").get("sizeMiB", 16))
    if size < 1:
        raise VmSpecError(f"disk {name}: ephemeral size must be at least 1 MiB")
    return Disk(name, "ephemeral", size_mib=size)


def _parse_interface(raw: Mapping[str, Any]) -> Interface:
    name = str(raw.get("name", ""))
    network = str(raw.get("network", "pod"))
    binding = str(raw.get("binding", "masquerade"))
    mac = raw.get("macAddress")
    if not _NAME.match(name) or not _NAME.match(network):
        raise VmSpecError(f"interface {name!r} on network {network!r}: invalid name")
    if binding not in ("masquerade", "bridge"):
        raise VmSpecError(f"interface {name}: binding {binding!r} is not masquerade or bridge")
    if network != "pod" and binding != "bridge":
        raise VmSpecError(f"interface {name}: an additional network takes the bridge binding")
    if network != "pod" and not mac:
        raise VmSpecError(f"interface {name}: a bridge on an additional network needs a macAddress")
    if mac is not None and not _MAC.match(str(mac)):
        raise VmSpecError(f"interface {name}: {mac!r} is not a unicast MAC address")
    return Interface(name, network, binding, str(mac) if mac else None, str(raw.get("model", "virtio")))


def parse_vm_spec(spec: Mapping[str, Any]) -> VmSpec:
    """A VirtualMachine's ``spec`` (as the API server returns it, defaults applied) as a VmSpec."""
    cores = int(_mapping(spec.get("cpu"), "cpu").get("cores", 1))
    if not 1 <= cores <= 64:
        raise VmSpecError(f"cpu.cores must be 1..64, not {cores}")
    memory = parse_memory_mib(str(_mapping(spec.get("memory"), "memory").get("guest", "128Mi")))
    if memory < 32:
        raise VmSpecError("guest memory must be at least 32Mi")
    run = str(spec.get("runStrategy", "Always"))
    if run not in RUN_STRATEGIES:
        raise VmSpecError(f"runStrategy {run!r} is not one of {', '.join(RUN_STRATEGIES)}")
    evict = str(spec.get("evictionStrategy", "LiveMigrateIfPossible"))
    if evict not in EVICTION_STRATEGIES:
        raise VmSpecError(f"evictionStrategy {evict!r} is not one of {', '.join(EVICTION_STRATEGIES)}")
    disks = tuple(_parse_disk(d) for d in _items(spec.get("disks"), "disks"))
    interfaces = tuple(_parse_interface(i) for i in _items(spec.get("interfaces"), "interfaces"))
    for what, names in (("disk", [d.name for d in disks]), ("interface", [i.name for i in interfaces])):
        if len(set(names)) != len(names):
            raise VmSpecError(f"{what} names must be unique")
    devices = tuple(
        HostDevice(str(h.get("name", "")), str(h.get("pciAddress", "")))
        for h in _items(spec.get("hostDevices"), "hostDevices")
    )
    selector = {str(k): str(v) for k, v in _mapping(spec.get("nodeSelector"), "nodeSelector").items()}
    return VmSpec(
        cpu_cores=cores,
        memory_mib=memory,
        disks=disks,
        interfaces=interfaces,
        host_devices=devices,
        run_strategy=run,
        eviction_strategy=evict,
        priority=int(spec.get("priority", 0)),
        node_selector=selector,
        tolerations=tuple(dict(t) for t in _items(spec.get("tolerations"), "tolerations")),
    )


# --- status ------------------------------------------------------------------------------------


def parse_time(value: object) -> dt.datetime | None:
    """An RFC 3339 timestamp (as the API server writes them) as an aware datetime, else None."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def format_time(value: dt.datetime) -> str:
    """RFC 3339 with microseconds, UTC, 'Z'."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class DomainEntry:
    """What one node's handler reports about the VM's domain on that node."""

    pod: str
    state: str
    since: dt.datetime | None = None
    reason: str = ""
    message: str = ""

    def to_json(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "pod": self.pod,
            "state": self.state,
            "reason": self.reason,
            "message": self.message,
            "since": format_time(self.since or now),
            "updatedAt": format_time(now),
        }


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str = ""
    last_transition: dt.datetime | None = None

    def to_json(self, generation: int) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": format_time(self.last_transition or dt.datetime.now(dt.UTC)),
            "observedGeneration": generation,
        }


@dataclass(frozen=True)
class ActiveMigration:
    name: str
    target_pod: str
    source_node: str


@dataclass(frozen=True)
class VmStatus:
    phase: str = ""
    node_name: str = ""
    active_pod: str = ""
    domains: Mapping[str, DomainEntry] = field(default_factory=dict)
    active_migration: ActiveMigration | None = None
    last_exit_reason: str = ""
    last_exit_node: str = ""
    last_exit_at: dt.datetime | None = None
    restarts: int = 0
    conditions: tuple[Condition, ...] = ()
    present: bool = False  # whether the object had a status at all

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def with_changes(self, **changes: Any) -> VmStatus:
        return replace(self, **changes)


def parse_domain_entry(raw: Mapping[str, Any]) -> DomainEntry:
    return DomainEntry(
        pod=str(raw.get("pod", "")),
        state=str(raw.get("state", "")),
        since=parse_time(raw.get("since")),
        reason=str(raw.get("reason", "")),
        message=str(raw.get("message", "")),
    )


def parse_vm_status(status: Mapping[str, Any] | None) -> VmStatus:
    if not status:
        return VmStatus()
    domains = {
        str(node): parse_domain_entry(entry)
        for node, entry in _mapping(status.get("domains"), "status.domains").items()
        if isinstance(entry, Mapping)
    }
    migration = status.get("activeMigration")
    active = (
        ActiveMigration(
            str(migration.get("name", "")),
            str(migration.get("targetPod", "")),
            str(migration.get("sourceNode", "")),
        )
        if isinstance(migration, Mapping) and migration.get("name")
        else None
    )
    exit_ = _mapping(status.get("lastExit"), "status.lastExit")
    conditions = tuple(
        Condition(
            str(c.get("type", "")),
            str(c.get("status", "Unknown")),
            str(c.get("reason", "")),
            str(c.get("message", "")),
            parse_time(c.get("lastTransitionTime")),
        )
        for c in _items(status.get("conditions"), "status.conditions")
    )
    return VmStatus(
        phase=str(status.get("phase", "")),
        node_name=str(status.get("nodeName", "")),
        active_pod=str(status.get("activePod", "")),
        domains=domains,
        active_migration=active,
        last_exit_reason=str(exit_.get("reason", "")),
        last_exit_node=str(exit_.get("node", "")),
        last_exit_at=parse_time(exit_.get("at")),
        restarts=int(status.get("restarts", 0) or 0),
        conditions=conditions,
        present=True,
    )


def domain_name(namespace: str, name: str) -> str:
    """The libvirt domain name of a VM: unique per cluster, the same on every node."""
    return f"{namespace}_{name}"


def split_domain_name(domain: str) -> tuple[str, str] | None:
    """(namespace, name) of a vmcore domain name, None for anything else."""
    namespace, sep, name = domain.partition("_")
    if not sep or not _NAME.match(namespace) or not _NAME.match(name):
        return None
    return namespace, name


@dataclass(frozen=True)
class DomainSpec:
    """Everything a handler needs to run a VM, frozen into the VM pod's ``domain`` annotation."""

    namespace: str
    name: str
    uid: str
    spec: VmSpec

    @property
    def domain_name(self) -> str:
        return domain_name(self.namespace, self.name)

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid, "spec": self.spec.to_json()}


def parse_domain_spec(raw: Mapping[str, Any]) -> DomainSpec:
    namespace, name, uid = str(raw.get("namespace", "")), str(raw.get("name", "")), str(raw.get("uid", ""))
    if not _NAME.match(namespace) or not _NAME.match(name):
        raise VmSpecError(f"invalid VM identity {namespace!r}/{name!r}")
    if not re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", uid):
        raise VmSpecError(f"VM uid {uid!r} is not a UUID")
    return DomainSpec(namespace, name, uid, parse_vm_spec(_mapping(raw.get("spec"), "spec")))


@dataclass(frozen=True)
class MigrateRequest:
    """Controller -> source handler (annotation on the source pod)."""

    migration: str
    target_pod: str
    target_node: str
    target_uri: str
    timeout_seconds: int
    bandwidth_mibps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "targetPod": self.target_pod,
            "targetNode": self.target_node,
            "targetUri": self.target_uri,
            "timeoutSeconds": self.timeout_seconds,
            "bandwidthMiBps": self.bandwidth_mibps,
        }


def parse_migrate_request(raw: Mapping[str, Any]) -> MigrateRequest:
    return MigrateRequest(
        migration=str(raw.get("migration", "")),
        target_pod=str(raw.get("targetPod", "")),
        target_node=str(raw.get("targetNode", "")),
        target_uri=str(raw.get("targetUri", "")),
        timeout_seconds=int(raw.get("timeoutSeconds", 60)),
        bandwidth_mibps=int(raw.get("bandwidthMiBps", 0)),
    )


@dataclass(frozen=True)
class MigrationReport:
    """Source handler -> controller (annotation on the source pod)."""

    migration: str
    phase: str  # Running, Succeeded, Failed
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    progress: int = 0
    transferred_bytes: int = 0
    downtime_ms: int | None = None
    reason: str = ""
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "migration": self.migration,
            "phase": self.phase,
            "progress": self.progress,
            "transferredBytes": self.transferred_bytes,
            "reason": self.reason,
            "message": self.message,
        }
        if self.started_at:
            out["startedAt"] = format_time(self.started_at)
        if self.ended_at:
            out["endedAt"] = format_time(self.ended_at)
        if self.downtime_ms is not None:
            out["downtimeMs"] = self.downtime_ms
        return out


def parse_migration_report(raw: Mapping[str, Any]) -> MigrationReport:
    downtime = raw.get("downtimeMs")
    return MigrationReport(
        migration=str(raw.get("migration", "")),
        phase=str(raw.get("phase", "")),
        started_at=parse_time(raw.get("startedAt")),
        ended_at=parse_time(raw.get("endedAt")),
        progress=int(raw.get("progress", 0)),
        transferred_bytes=int(raw.get("transferredBytes", 0)),
        downtime_ms=int(downtime) if downtime is not None else None,
        reason=str(raw.get("reason", "")),
        message=str(raw.get("message", "")),
    )
