"""Prometheus metrics of the controllers, and the endpoint that serves them.

Series (all prefixed ``remediator_``):

* ``unhealthy_nodes{policy}`` -- nodes a NodeHealthCheck currently finds unhealthy;
* ``remediations_total{policy,outcome}`` -- remediations started, succeeded and failed (escalated);
* ``storm_active{policy}`` -- 1 while a storm holds remediation back;
* ``unhealthy_to_fence_verified_seconds{policy}`` -- from a node turning unhealthy to its Fence
  reading the host back off;
* ``fences_total{action,outcome,dry_run}`` -- Fences that reached Succeeded or Failed;
* ``fence_duration_seconds{action,outcome}`` -- from a Fence's acceptance to its terminal phase;
* ``fence_phase_duration_seconds{phase}`` -- time spent in each phase of the Fence state machine;
* ``bmc_call_duration_seconds{driver,operation}`` -- one verified power attempt (command and read-back)
  per fence driver (redfish, ipmi, machineAPI) and operation (PowerOff, PowerOn, Status);
* ``bmc_call_errors_total{driver,operation,error}`` -- failed attempts by driver and error class;
* ``vm_restarts_total{reason}`` -- VMs vmcore started again (after a verified fence, a crash, ...);
* ``vm_recovery_seconds`` -- from the Fence verifying a VM's old host off to the VM running again;
* ``vm_migrations_total{outcome}`` -- live migrations that succeeded or failed;
* ``vm_migration_downtime_seconds`` -- guest pause at hand-over, as libvirt measured it.

Every family is listed in :data:`SERIES` (the deploy checks and the Grafana dashboard rely on it).
The helpers at the bottom are what the controllers call.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

UNHEALTHY_NODES = Gauge(
    "remediator_unhealthy_nodes", "Nodes a NodeHealthCheck currently finds unhealthy.", ["policy"]
)
REMEDIATIONS = Counter(
    "remediator_remediations_total",
    "Remediations by NodeHealthCheck policy and outcome (started, succeeded, failed).",
    ["policy", "outcome"],
)
STORM_ACTIVE = Gauge(
    "remediator_storm_active", "1 while too many unhealthy nodes hold remediation back.", ["policy"]
)
UNHEALTHY_TO_VERIFIED = Histogram(
    "remediator_unhealthy_to_fence_verified_seconds",
    "Time from a node turning unhealthy to its Fence reading the host back off.",
    ["policy"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600),
)


FENCES = Counter(
    "remediator_fences_total",
    "Fences that reached a terminal phase, by action, outcome (Succeeded, Failed) and dry run.",
    ["action", "outcome", "dry_run"],
)
FENCE_DURATION = Histogram(
    "remediator_fence_duration_seconds",
    "Time from a Fence's acceptance to Succeeded or Failed.",
    ["action", "outcome"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
FENCE_PHASE_DURATION = Histogram(
    "remediator_fence_phase_duration_seconds",
    "Time a Fence spent in each phase of the state machine.",
    ["phase"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
)
BMC_CALL_DURATION = Histogram(
    "remediator_bmc_call_duration_seconds",
    "One verified power attempt (command and read-back), by fence driver and operation.",
    ["driver", "operation"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120),
)
BMC_CALL_ERRORS = Counter(
    "remediator_bmc_call_errors_total",
    "Failed power attempts, by fence driver, operation and error class.",
    ["driver", "operation", "error"],
)
VM_RESTARTS = Counter(
    "remediator_vm_restarts_total",
    "VMs vmcore started again, by reason (NodeFenced, Crashed, Lost, ...).",
    ["reason"],
)
VM_RECOVERY = Histogram(
    "remediator_vm_recovery_seconds",
    "Time from a Fence verifying a VM's old host off to the VM running again elsewhere.",
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300),
)
VM_MIGRATIONS = Counter(
    "remediator_vm_migrations_total", "Live migrations by outcome (Succeeded, Failed).", ["outcome"]
)
VM_MIGRATION_DOWNTIME = Histogram(
    "remediator_vm_migration_downtime_seconds",
    "Guest pause at the hand-over of a live migration, as libvirt measured it.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)

#: Every metric family this module defines, by its exposed name.
SERIES: tuple[str, ...] = (
    "remediator_unhealthy_nodes",
    "remediator_remediations_total",
    "remediator_storm_active",
    "remediator_unhealthy_to_fence_verified_seconds",
    "remediator_fences_total",
    "remediator_fence_duration_seconds",
    "remediator_fence_phase_duration_seconds",
    "remediator_bmc_call_duration_seconds",
    "remediator_bmc_call_errors_total",
    "remediator_vm_restarts_total",
    "remediator_vm_recovery_seconds",
    "remediator_vm_migrations_total",
    "remediator_vm_migration_downtime_seconds",
)


def observe_power_attempt(driver: str, operation: str, seconds: float, error: str | None) -> None:
    """One power attempt through one fence level: ``driver`` is the level type (redfish, ipmi,
    machineAPI), ``error`` the error class name when it failed."""
    BMC_CALL_DURATION.labels(driver, operation).observe(max(seconds, 0.0))
    if error:
        BMC_CALL_ERRORS.labels(driver, operation, error).inc()


def observe_fence_finished(
    action: str, outcome: str, dry_run: bool, total_seconds: float, phases: Iterable[tuple[str, float]]
) -> None:
    """A Fence reached Succeeded or Failed: its outcome, total time and time per phase."""
    FENCES.labels(action, outcome, "true" if dry_run else "false").inc()
    FENCE_DURATION.labels(action, outcome).observe(max(total_seconds, 0.0))
    for phase, seconds in phases:
        FENCE_PHASE_DURATION.labels(phase).observe(max(seconds, 0.0))


def observe_vm_restart(reason: str, since_fence_verified_seconds: float | None = None) -> None:
    """vmcore started a VM again; with the time since its old host was verified off, if fenced."""
    VM_RESTARTS.labels(reason).inc()
    if since_fence_verified_seconds is not None:
        VM_RECOVERY.observe(max(since_fence_verified_seconds, 0.0))


def observe_migration(outcome: str, downtime_ms: int | None = None) -> None:
    """A live migration ended (Succeeded or Failed), with libvirt's downtime when it succeeded."""
    VM_MIGRATIONS.labels(outcome).inc()
    if downtime_ms is not None:
        VM_MIGRATION_DOWNTIME.observe(downtime_ms / 1000.0)


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve /metrics on ``address:port`` in a background thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=address)
