"""vmcore's decisions, pure: (VM, its pods, nodes, fences, migrations, now) -> what to do next.

No kopf, no Kubernetes client, no libvirt: the controller and the handler gather views, call these
functions, and carry out the plan they return. Table-driven unit tests cover them
(``tests/unit/test_vmcore_decisions.py``).

The one safety rule, enforced here and by the handler's conditional writes:

    A VM's ``status.domains`` lists every node whose libvirt may run its domain. A handler adds its
    node's entry (a JSON-patch ``test`` on ``status.activePod``) *before* it starts a domain and removes
    it only after the domain is gone. The controller designates a new VM pod (``status.activePod``,
    written with a resourceVersion precondition) only when no entry is left -- an entry goes away when its
    handler reports the domain gone, or when a Fence has verified its node off *after* the entry was
    written. So a VM never runs twice, and a lost node without a fence keeps its VMs down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vmcore.api import (
    DOMAIN_FAILED,
    DOMAIN_INCOMING,
    DOMAIN_MIGRATING,
    DOMAIN_PAUSED,
    DOMAIN_RUNNING,
    DOMAIN_STARTING,
    DOMAIN_STOPPED,
    ROLE_TARGET,
    TERMINAL_DOMAIN_STATES,
    ActiveMigration,
    Condition,
    DomainEntry,
    MigrateRequest,
    MigrationReport,
    VmSpec,
    VmStatus,
)

# --- live-migratability --------------------------------------------------------------------------


@dataclass(frozen=True)
class Migratability:
    migratable: bool
    reason: str
    message: str


def live_migratable(spec: VmSpec) -> Migratability:
    """Whether the VM can move live, and why not (KubeVirt's reasons, in the same words)."""
    for iface in spec.interfaces:
        if iface.network == "pod" and iface.binding == "bridge":
            return Migratability(
                False,
                "InterfaceNotLiveMigratable",
                f"interface {iface.name} binds the pod network with a bridge; use masquerade",
            )
    for disk in spec.disks:
        if disk.kind == "ephemeral":
            return Migratability(
                False, "DisksNotLiveMigratable", f"disk {disk.name} is ephemeral (node-local)"
            )
        if not disk.shared:
            return Migratability(
                False, "DisksNotLiveMigratable", f"disk {disk.name} is not on shared storage"
            )
    if spec.host_devices:
        names = ", ".join(d.name for d in spec.host_devices)
        return Migratability(False, "HostDeviceNotLiveMigratable", f"host devices passed through: {names}")
    return Migratability(True, "Migratable", "the VM can be moved live")


# --- views ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodView:
    name: str
    role: str
    node: str = ""
    deleting: bool = False
    migration: str = ""
    unschedulable: str = ""  # the scheduler's message when it could not place the pod
    target_uri: str = ""  # set by a target pod's handler once it is prepared
    migrate_request: str = ""  # the migration named in the pod's migrate annotation
    report: MigrationReport | None = None
    created: dt.datetime | None = None


@dataclass(frozen=True)
class NodeView:
    name: str
    ready: str = ""  # "True", "False", "Unknown"; "" when the Node does not exist
    unschedulable: bool = False
    libvirt_uri: str = ""

    @property
    def healthy(self) -> bool:
        return self.ready == "True"


@dataclass(frozen=True)
class MigrationView:
    name: str
    vm_name: str
    target_node: str = ""
    timeout_seconds: int = 60
    bandwidth_mibps: int = 0
    phase: str = ""
    created: dt.datetime | None = None
    source_node: str = ""
    target_pod: str = ""
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class VmView:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: VmSpec | None  # None when the spec cannot be run (spec_error says why)
    status: VmStatus
    requested_state: str = ""  # Manual/RerunOnFailure start/stop requests ("Running", "Stopped")
    spec_error: str = ""


def fence_verified_at(fence: Mapping[str, object]) -> dt.datetime | None:
    """When a Fence (a raw object) verified its node off, or None if it has not (or is a dry run)."""
    from vmcore.api import parse_time

    status = fence.get("status")
    spec = fence.get("spec")
    if not isinstance(status, Mapping) or (isinstance(spec, Mapping) and spec.get("dryRun")):
        return None
    if status.get("dryRun"):
        return None
    conditions = status.get("conditions")
    for cond in conditions if isinstance(conditions, list) else []:
        if isinstance(cond, Mapping) and cond.get("type") == "FenceVerified" and cond.get("status") == "True":
            return parse_time(cond.get("lastTransitionTime"))
    facts = status.get("facts")
    verified = parse_time(facts.get("powerOffVerifiedAt")) if isinstance(facts, Mapping) else None
    if verified and status.get("phase") in ("Releasing", "Recovering", "Removing", "Succeeded"):
        return verified
    return None


# --- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    name: str
    role: str
    migration: str = ""
    target_node: str = ""
    avoid_node: str = ""


@dataclass
class Plan:
    """What the controller must do for one VM, in this order: status, pods, migrations, extras."""

    status: VmStatus
    clear_domains: list[str] = field(default_factory=list)
    create_pod: CreatePod | None = None
    delete_pods: list[tuple[str, bool]] = field(default_factory=list)  # (name, force)
    annotate: list[tuple[str, str, str | None]] = field(default_factory=list)  # (pod, key, value)
    make_launcher: str = ""  # target pod to relabel as the launcher after a hand-over
    migration_status: dict[str, dict[str, object]] = field(default_factory=dict)
    create_migration: str = ""  # reason, when an evacuation migration must be created
    consume_request: bool = False
    want_pdb: bool = False
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None


READY = "Ready"
#: Exit reasons after which a restart waits (exponentially longer each time, up to the maximum).
CRASH_REASONS = ("Crashed", "StartFailed")
MAX_BACKOFF_SECONDS = 30.0
LIVE_MIGRATABLE = "LiveMigratable"


def _cond(
    status: VmStatus, type_: str, value: str, reason: str, message: str, now: dt.datetime
) -> tuple[Condition, ...]:
    old = status.condition(type_)
    since = old.last_transition if old and old.status == value and old.last_transition else now
    new = Condition(type_, value, reason, message, since)
    kept = tuple(c for c in status.conditions if c.type != type_)
    return (*kept, new)


def _ready(status: VmStatus, ok: bool, reason: str, message: str, now: dt.datetime) -> VmStatus:
    return status.with_changes(
        conditions=_cond(status, READY, "True" if ok else "False", reason, message, now)
    )


def wants_to_start(spec: VmSpec, status: VmStatus, request: str) -> bool:
    """With no VM pod: whether the VM should be started now (runStrategy semantics)."""
    if spec.run_strategy == "Halted":
        return False
    if request == "Running":
        return True
    if spec.run_strategy == "Always":
        return True
    if spec.run_strategy == "RerunOnFailure":
        return status.last_exit_reason not in ("GuestShutdown", "Stopped")
    return False  # Manual: only on request


def wants_to_keep(spec: VmSpec, request: str) -> bool:
    """With a VM pod: whether it should keep running."""
    return spec.run_strategy != "Halted" and request != "Stopped"


def _exit_reason(entry: DomainEntry) -> str:
    if entry.state == DOMAIN_STOPPED:
        return "GuestShutdown"
    return entry.reason or "Crashed"


def decide_vm(
    vm: VmView,
    pods: Sequence[PodView],
    nodes: Mapping[str, NodeView],
    fenced_at: Mapping[str, dt.datetime],
    migrations: Sequence[MigrationView],
    now: dt.datetime,
    new_pod_name: str,
    fencing_nodes: frozenset[str] = frozenset(),
) -> Plan:
    """The next step for one VM. ``new_pod_name`` is used if a VM pod must be created."""
    status = vm.status
    if not status.present:
        status = status.with_changes(present=True)
    plan = Plan(status=status)
    if vm.spec is None:
        plan.status = _ready(status.with_changes(phase="Failed"), False, "InvalidSpec", vm.spec_error, now)
        return plan
    spec = vm.spec
    movable = live_migratable(spec)
    status = status.with_changes(
        conditions=_cond(
            status,
            LIVE_MIGRATABLE,
            "True" if movable.migratable else "False",
            movable.reason,
            movable.message,
            now,
        )
    )
    by_name = {p.name: p for p in pods}
    active = by_name.get(status.active_pod) if status.active_pod else None
    if active is not None and active.deleting:
        active = None

    # Stray pods: launchers that are not the designated one, targets of no active migration.
    migration_target = status.active_migration.target_pod if status.active_migration else ""
    for pod in pods:
        if pod.deleting or pod.name in (status.active_pod, migration_target):
            continue
        plan.delete_pods.append((pod.name, False))

    protect = spec.eviction_strategy == "LiveMigrate" or (
        spec.eviction_strategy == "LiveMigrateIfPossible" and movable.migratable
    )
    if status.active_migration is not None:
        status = _drive_migration(vm, spec, status, plan, by_name, nodes, migrations, now)
        plan.status = status
        plan.want_pdb = protect and plan.status.active_pod != ""  # a drain waits for the migration
        return plan

    if active is not None:
        status = _with_pod(vm, spec, status, plan, active, nodes, fenced_at, now)
    else:
        status = _without_pod(vm, spec, status, plan, nodes, fenced_at, now, new_pod_name)

    # Pending migrations start once the VM runs and nothing else moves it.
    plan.status = status
    if status.active_migration is None and status.phase == "Running" and active is not None:
        _start_next_migration(vm, spec, plan, active, nodes, migrations, now, movable, fencing_nodes)
    else:
        _fail_pending_migrations_if_stopped(plan, migrations, now, status)
    plan.want_pdb = protect and plan.status.active_pod != ""
    return plan


def _with_pod(  # noqa: PLR0911 - a decision table
    vm: VmView,
    spec: VmSpec,
    status: VmStatus,
    plan: Plan,
    pod: PodView,
    nodes: Mapping[str, NodeView],
    fenced_at: Mapping[str, dt.datetime],
    now: dt.datetime,
) -> VmStatus:
    entry = status.domains.get(pod.node) if pod.node else None
    mine = entry if entry is not None and entry.pod == pod.name else None
    if not wants_to_keep(spec, vm.requested_state):
        plan.delete_pods.append((pod.name, False))
        plan.consume_request = vm.requested_state == "Stopped"
        plan.events.append(("Normal", "Stopping", f"stopping the VM (runStrategy {spec.run_strategy})"))
        status = status.with_changes(
            phase="Stopping",
            active_pod="",
            last_exit_reason="Stopped",
            last_exit_node=pod.node,
            last_exit_at=now,
        )
        return _ready(status, False, "Stopping", "the VM is being stopped", now)
    if vm.requested_state == "Running":
        plan.consume_request = True
    if mine is not None and mine.state in TERMINAL_DOMAIN_STATES:
        reason = _exit_reason(mine)
        plan.delete_pods.append((pod.name, False))
        plan.events.append(
            ("Warning" if reason != "GuestShutdown" else "Normal", reason, mine.message or reason)
        )
        status = status.with_changes(
            phase="Stopping" if reason == "GuestShutdown" else "Failed",
            active_pod="",
            last_exit_reason=reason,
            last_exit_node=pod.node,
            last_exit_at=now,
        )
        return _ready(
            status, False, reason, f"the guest stopped on {pod.node}: {mine.message or reason}", now
        )
    node = nodes.get(pod.node) if pod.node else None
    if pod.node and (node is None or not node.healthy):
        verified = fenced_at.get(pod.node)
        if mine is None or (verified is not None and (mine.since is None or verified >= mine.since)):
            # Proven off (or the handler never recorded a domain there): the pod can go at once.
            plan.delete_pods.append((pod.name, True))
            if mine is not None:
                plan.clear_domains.append(pod.node)
            why = "its node was fenced" if mine is not None else "its node was lost before the VM started"
            plan.events.append(("Warning", "NodeFenced" if mine else "NodeLost", f"restarting the VM: {why}"))
            status = status.with_changes(
                phase="Pending",
                active_pod="",
                domains={k: v for k, v in status.domains.items() if k != pod.node},
                last_exit_reason="NodeFenced" if mine is not None else "Lost",
                last_exit_node=pod.node,
                last_exit_at=now,
            )
            return _ready(status, False, "Restarting", f"{pod.node} is off; restarting elsewhere", now)
        state = node.ready if node else "gone"
        status = status.with_changes(phase="Unknown", node_name=pod.node)
        return _ready(
            status,
            False,
            "WaitingForFence",
            f"node {pod.node} is lost (Ready={state or 'missing'}) and no Fence has verified it off; the VM "
            "stays down until one does (it may still run there)",
            now,
        )
    if not pod.node:
        message = pod.unschedulable or "waiting for the scheduler"
        status = status.with_changes(phase="Scheduling")
        return _ready(status, False, "Unschedulable" if pod.unschedulable else "Scheduling", message, now)
    status = status.with_changes(node_name=pod.node)
    if mine is None or mine.state in (DOMAIN_STARTING, DOMAIN_INCOMING):
        return _ready(
            status.with_changes(phase="Starting"), False, "Starting", f"starting on {pod.node}", now
        )
    if mine.state == DOMAIN_PAUSED:
        return _ready(status.with_changes(phase="Running"), False, "Paused", "the guest is paused", now)
    if mine.state == DOMAIN_MIGRATING:
        return _ready(status.with_changes(phase="Migrating"), True, "Running", f"running on {pod.node}", now)
    return _ready(status.with_changes(phase="Running"), True, "Running", f"running on {pod.node}", now)


def _without_pod(
    vm: VmView,
    spec: VmSpec,
    status: VmStatus,
    plan: Plan,
    nodes: Mapping[str, NodeView],
    fenced_at: Mapping[str, dt.datetime],
    now: dt.datetime,
    new_pod_name: str,
) -> VmStatus:
    if status.active_pod:
        # The designated pod was deleted (eviction, a Fence's clean-up, a user): the VM stopped.
        last = status.domains.get(status.node_name)
        lost_node = status.node_name
        plan.events.append(("Normal", "PodGone", f"VM pod {status.active_pod} is gone"))
        status = status.with_changes(
            active_pod="",
            last_exit_reason=status.last_exit_reason if last is None else "Evicted",
            last_exit_node=lost_node,
            last_exit_at=now,
        )
    domains = dict(status.domains)
    lost: list[str] = []
    stopping: list[str] = []
    for node_name, entry in sorted(status.domains.items()):
        verified = fenced_at.get(node_name)
        node = nodes.get(node_name)
        if verified is not None and (entry.since is None or verified >= entry.since):
            plan.clear_domains.append(node_name)
            del domains[node_name]
        elif node is None or not node.healthy:
            lost.append(node_name)
        else:
            stopping.append(node_name)
    status = status.with_changes(domains=domains)
    start = wants_to_start(spec, status, vm.requested_state)
    if vm.requested_state == "Stopped":
        plan.consume_request = True
    if lost:
        names = ", ".join(lost)
        status = status.with_changes(phase="Unknown" if start else "Stopping")
        return _ready(
            status,
            False,
            "WaitingForFence",
            f"the VM may still run on {names}, which is lost and not fenced; it is started again only once a "
            "Fence verifies that host off",
            now,
        )
    if stopping:
        status = status.with_changes(phase="Stopping")
        return _ready(
            status, False, "WaitingForHandler", f"waiting for {', '.join(stopping)} to stop the domain", now
        )
    if not start:
        reason = "Halted" if spec.run_strategy == "Halted" else status.last_exit_reason or "Stopped"
        phase = "Failed" if status.last_exit_reason in ("Crashed", "Lost") else "Stopped"
        return _ready(
            status.with_changes(phase=phase), False, reason, f"runStrategy {spec.run_strategy}", now
        )
    if status.last_exit_reason in CRASH_REASONS and status.last_exit_at is not None:
        backoff = min(2.0 ** min(status.restarts, 5), MAX_BACKOFF_SECONDS)
        left = backoff - (now - status.last_exit_at).total_seconds()
        if left > 0:
            plan.requeue_after = left
            status = status.with_changes(phase="Pending")
            return _ready(
                status, False, "CrashLoopBackOff", f"the guest failed; starting again in {left:.0f}s", now
            )
    restarting = status.last_exit_reason not in ("", "Stopped", "GuestShutdown") or bool(status.node_name)
    plan.create_pod = CreatePod(new_pod_name, "launcher")
    plan.consume_request = vm.requested_state == "Running"
    restarts = status.restarts + (1 if restarting and status.last_exit_reason not in ("", "Stopped") else 0)
    plan.events.append(("Normal", "Starting", f"created VM pod {new_pod_name}"))
    status = status.with_changes(phase="Scheduling", active_pod=new_pod_name, restarts=restarts)
    return _ready(status, False, "Scheduling", "waiting for the scheduler", now)


# --- migrations ----------------------------------------------------------------------------------


def migration_failed(reason: str, message: str, now: dt.datetime) -> dict[str, object]:
    from vmcore.api import format_time

    return {"phase": "Failed", "failureReason": reason, "message": message, "endedAt": format_time(now)}


def _fail_pending_migrations_if_stopped(
    plan: Plan, migrations: Sequence[MigrationView], now: dt.datetime, status: VmStatus
) -> None:
    if status.phase in ("Running", "Starting", "Scheduling", "Unknown", "Migrating"):
        return  # it may still get there: pending migrations wait
    for mig in migrations:
        if not mig.finished and mig.phase in ("", "Pending"):
            plan.migration_status[mig.name] = migration_failed(
                "VmNotRunning", f"the VM is {status.phase}", now
            )


def _start_next_migration(
    vm: VmView,
    spec: VmSpec,
    plan: Plan,
    active: PodView,
    nodes: Mapping[str, NodeView],
    migrations: Sequence[MigrationView],
    now: dt.datetime,
    movable: Migratability,
    fencing_nodes: frozenset[str],
) -> None:
    from vmcore.api import format_time

    pending = sorted((m for m in migrations if not m.finished), key=lambda m: (m.created or now, m.name))
    if not pending:
        source = nodes.get(active.node)
        drained = source is not None and source.unschedulable and source.healthy
        if drained and active.node not in fencing_nodes and spec.eviction_strategy != "None":
            if movable.migratable:
                plan.create_migration = f"drain of {active.node}"
            elif spec.eviction_strategy == "LiveMigrate":
                plan.events.append(
                    ("Warning", "EvictionBlocked", f"cannot move live ({movable.message}); the drain waits")
                )
        return
    mig = pending[0]
    if not movable.migratable:
        plan.migration_status[mig.name] = migration_failed(movable.reason, movable.message, now)
        return
    if mig.target_node and mig.target_node == active.node:
        plan.migration_status[mig.name] = migration_failed(
            "TargetIsSource", f"the VM already runs on {active.node}", now
        )
        return
    target_pod = f"{vm.name}-target-{mig.name}"[:63].rstrip("-")
    plan.status = plan.status.with_changes(
        phase="Migrating", active_migration=ActiveMigration(mig.name, target_pod, active.node)
    )
    plan.create_pod = CreatePod(
        target_pod, ROLE_TARGET, migration=mig.name, target_node=mig.target_node, avoid_node=active.node
    )
    plan.migration_status[mig.name] = {
        "phase": "Scheduling",
        "sourceNode": active.node,
        "targetPod": target_pod,
        "startedAt": format_time(now),
        "message": "waiting for the scheduler to place the target pod",
    }
    plan.events.append(("Normal", "Migrating", f"migration {mig.name} from {active.node} started"))


def _drive_migration(  # noqa: PLR0911, PLR0912, PLR0915 - a decision table
    vm: VmView,
    spec: VmSpec,
    status: VmStatus,
    plan: Plan,
    pods: Mapping[str, PodView],
    nodes: Mapping[str, NodeView],
    migrations: Sequence[MigrationView],
    now: dt.datetime,
) -> VmStatus:
    from vmcore.api import format_time

    active_mig = status.active_migration
    assert active_mig is not None
    mig = next((m for m in migrations if m.name == active_mig.name), None)
    source = pods.get(status.active_pod)
    target = pods.get(active_mig.target_pod)
    source_node = nodes.get(active_mig.source_node)
    target_entry = status.domains.get(target.node) if target and target.node else None

    def finish(ok: bool, fields: dict[str, object]) -> VmStatus:
        nonlocal status
        if mig is not None:
            plan.migration_status[mig.name] = fields
        if ok and target is not None:
            plan.make_launcher = target.name
            if source is not None:
                plan.delete_pods.append((source.name, False))
            status = status.with_changes(
                active_pod=target.name, node_name=target.node, active_migration=None, phase="Running"
            )
            plan.events.append(("Normal", "Migrated", f"now running on {target.node}"))
            return _ready(status, True, "Running", f"running on {target.node}", now)
        if target is not None and not target.deleting:
            plan.delete_pods.append((target.name, False))
        if source is not None and source.migrate_request:
            plan.annotate.append((source.name, "migrate", None))
        plan.events.append(("Warning", "MigrationFailed", str(fields.get("message", ""))))
        status = status.with_changes(active_migration=None, phase="Running" if source else "Unknown")
        return status

    if mig is None or source is None or source.deleting:
        if (
            target_entry is not None
            and target is not None
            and target_entry.pod == target.name
            and (target_entry.state == DOMAIN_RUNNING)
        ):
            return finish(True, {"phase": "Succeeded", "endedAt": format_time(now), "message": "handed over"})
        why = "the migration was deleted" if mig is None else "the source VM pod is gone"
        return finish(False, migration_failed("Cancelled" if mig is None else "SourceLost", why, now))
    report = source.report if source.report and source.report.migration == mig.name else None
    if report is not None and report.phase == "Succeeded":
        fields: dict[str, object] = {
            "phase": "Succeeded",
            "endedAt": format_time(report.ended_at or now),
            "transferredBytes": report.transferred_bytes,
            "progress": 100,
            "message": f"running on {target.node if target else '?'}",
        }
        if report.downtime_ms is not None:
            fields["downtimeMs"] = report.downtime_ms
        return finish(True, fields)
    if report is not None and report.phase == "Failed":
        fields = migration_failed(report.reason or "MigrationFailed", report.message, now)
        fields["transferredBytes"] = report.transferred_bytes
        return finish(False, fields)
    if source_node is None or not source_node.healthy:
        if (
            target_entry is not None
            and target is not None
            and target_entry.pod == target.name
            and (target_entry.state == DOMAIN_RUNNING)
        ):
            return finish(True, {"phase": "Succeeded", "endedAt": format_time(now), "message": "handed over"})
        return finish(
            False, migration_failed("SourceLost", f"source node {active_mig.source_node} was lost", now)
        )
    if target is None or target.deleting:
        return finish(False, migration_failed("TargetPodGone", "the target pod disappeared", now))
    if not target.node:
        if target.unschedulable:
            return finish(False, migration_failed("TargetUnschedulable", target.unschedulable, now))
        return status.with_changes(phase="Migrating")
    target_node = nodes.get(target.node)
    if (target_node is None or not target_node.healthy) and report is None:
        return finish(False, migration_failed("TargetLost", f"target node {target.node} was lost", now))
    status = status.with_changes(phase="Migrating")
    if not target.target_uri:
        plan.migration_status[mig.name] = {
            "phase": "Preparing",
            "targetNode": target.node,
            "message": f"waiting for {target.node}'s handler",
        }
        return status
    if source.migrate_request != mig.name:
        request = MigrateRequest(
            migration=mig.name,
            target_pod=target.name,
            target_node=target.node,
            target_uri=target.target_uri,
            timeout_seconds=mig.timeout_seconds,
            bandwidth_mibps=mig.bandwidth_mibps,
        )
        import json

        plan.annotate.append((source.name, "migrate", json.dumps(request.to_json(), sort_keys=True)))
        plan.migration_status[mig.name] = {
            "phase": "Running",
            "targetNode": target.node,
            "message": f"{active_mig.source_node} -> {target.node}",
        }
        return status
    if report is not None and report.phase == "Running":
        fields = {
            "phase": "Running",
            "progress": report.progress,
            "transferredBytes": report.transferred_bytes,
        }
        if report.started_at:
            fields["transferStartedAt"] = format_time(report.started_at)
        plan.migration_status[mig.name] = fields
    return status


def recovery_order(vms: Sequence[VmView]) -> list[VmView]:
    """The order in which the controller reconciles VMs: higher priority first, then by name."""
    return sorted(vms, key=lambda v: (-(v.spec.priority if v.spec else 0), v.namespace, v.name))


# --- the handler's decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeAction:
    """What a handler does for one VM on its node."""

    kind: str  # "start", "prepare-target", "report", "destroy", "clear-entry", "mark-target-ready", "none"
    pod: str = ""
    state: str = ""
    reason: str = ""
    message: str = ""


def decide_node(  # noqa: PLR0911, PLR0912 - a decision table
    node: str,
    launcher: PodView | None,
    target: PodView | None,
    status: VmStatus,
    domain_state: str,
    entries_written_here: frozenset[str],
    last_event: str = "",
) -> list[NodeAction]:
    """One handler's step for one VM on its node.

    ``launcher``/``target`` are the live VM pods bound to this node; ``domain_state`` is what this node's
    libvirt says ("" when there is no domain, else running, paused, shutoff, ...);
    ``entries_written_here`` the pods this handler process itself recorded (a domain is only ever started
    by the handler that recorded it, and never again after it stopped: never resumed after a reboot).
    """
    entry = status.domains.get(node)
    legit = ""
    if launcher is not None and launcher.name == status.active_pod:
        legit = launcher.name
    elif (
        target is not None and status.active_migration and status.active_migration.target_pod == target.name
    ) or (target is not None and target.name == status.active_pod):
        legit = target.name
    actions: list[NodeAction] = []
    running = domain_state in ("running", "paused", "blocked", "pmsuspended")
    if not legit:
        if domain_state:
            actions.append(NodeAction("destroy"))
        if entry is not None:
            actions.append(NodeAction("clear-entry", pod=entry.pod))
        return actions or [NodeAction("none")]
    is_target_phase = status.active_migration is not None and status.active_migration.target_pod == legit
    if is_target_phase:
        if entry is None or entry.pod != legit:
            return [NodeAction("prepare-target", pod=legit)]
        if running and domain_state == "running" and entry.state != DOMAIN_RUNNING:
            return [NodeAction("report", pod=legit, state=DOMAIN_RUNNING)]
        if target is not None and not target.target_uri:
            return [NodeAction("mark-target-ready", pod=legit)]
        if domain_state == "shutoff":
            return [NodeAction("destroy")]
        return [NodeAction("none")]
    if running:
        state = DOMAIN_PAUSED if domain_state == "paused" else DOMAIN_RUNNING
        if entry is None or entry.pod != legit:
            # A domain here without a record (a migrated-in domain after hand-over is recorded): adopt it.
            return [NodeAction("report", pod=legit, state=state, reason="Adopted")]
        if entry.state in TERMINAL_DOMAIN_STATES:
            return [NodeAction("destroy")]
        if entry.state not in (state, DOMAIN_MIGRATING):
            return [NodeAction("report", pod=legit, state=state)]
        return [NodeAction("none")]
    # No running domain for the designated pod.
    if last_event == "migrated" and entry is not None and entry.pod == legit:
        return [NodeAction("none")]  # moved away; the controller hands over on the source's report
    if launcher is not None and launcher.report is not None and launcher.report.phase == "Succeeded":
        return (
            [NodeAction("clear-entry", pod=legit)]
            if entry is not None and entry.pod == legit
            else [NodeAction("none")]
        )
    if entry is None or entry.pod != legit:
        return [NodeAction("start", pod=legit)]
    if entry.state == DOMAIN_STARTING and legit in entries_written_here:
        return [NodeAction("start", pod=legit)]
    if entry.state in TERMINAL_DOMAIN_STATES:
        return [NodeAction("destroy")] if domain_state else [NodeAction("none")]
    if last_event == "shutdown":
        state, reason, message = DOMAIN_STOPPED, "GuestShutdown", "the guest powered itself off"
    elif last_event == "crashed":
        state, reason, message = DOMAIN_FAILED, "Crashed", "the guest crashed"
    elif entry.state == DOMAIN_STARTING:
        state, reason, message = DOMAIN_FAILED, "Lost", "the handler restarted before the domain started"
    else:
        state, reason, message = DOMAIN_FAILED, "Lost", "the domain is gone (host rebooted or qemu died)"
    actions = [NodeAction("report", pod=legit, state=state, reason=reason, message=message)]
    if domain_state:
        actions.append(NodeAction("destroy"))
    return actions
