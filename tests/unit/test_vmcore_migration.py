"""Migration decisions (controller and handler), the peer URI, and the CLI's migration lines."""

from __future__ import annotations

import datetime as dt

import pytest

from vmcore.api import ActiveMigration, Disk, DomainEntry, DomainSpec, MigrationReport, VmSpec, VmStatus
from vmcore.decisions import MigrationView, NodeView, PodView, VmView, decide_node, decide_vm
from vmcore.domain import build_domain_xml

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
EARLIER = NOW - dt.timedelta(seconds=30)
UID = "0b5c1c9e-0000-4000-8000-000000000001"
HEALTHY = {n: NodeView(n, "True") for n in ("n1", "n2")}


def vm(status: VmStatus, eviction: str = "LiveMigrate", **spec: object) -> VmView:
    return VmView("ns", "v", UID, 1, VmSpec(eviction_strategy=eviction, **spec), status)  # type: ignore[arg-type,unused-ignore]


RUNNING = VmStatus(
    phase="Running",
    node_name="n1",
    active_pod="p1",
    domains={"n1": DomainEntry("p1", "Running", EARLIER)},
    present=True,
)
MIGRATING = RUNNING.with_changes(
    phase="Migrating",
    active_migration=ActiveMigration("m", "t1", "n1"),
    domains={"n1": DomainEntry("p1", "Running", EARLIER), "n2": DomainEntry("t1", "Incoming", EARLIER)},
)
MIG = MigrationView("m", "v", phase="Running", created=EARLIER)


def source(report: MigrationReport | None = None) -> PodView:
    return PodView("p1", "launcher", node="n1", migrate_request="m", report=report)


TARGET = PodView("t1", "target", node="n2", migration="m", target_uri="qemu:///system?socket=/b")


def test_a_pending_migration_creates_a_target_pod_that_avoids_the_source() -> None:
    plan = decide_vm(vm(RUNNING), [PodView("p1", "launcher", node="n1")], HEALTHY, {}, [MIG], NOW, "x")
    assert plan.create_pod is not None and plan.create_pod.role == "target"
    assert plan.create_pod.avoid_node == "n1"
    assert plan.status.active_migration == ActiveMigration("m", plan.create_pod.name, "n1")


def test_success_hands_over_with_downtime_and_bytes() -> None:
    report = MigrationReport("m", "Succeeded", EARLIER, NOW, 100, 4096, 25)
    plan = decide_vm(vm(MIGRATING), [source(report), TARGET], HEALTHY, {}, [MIG], NOW, "x")
    assert plan.make_launcher == "t1" and ("p1", False) in plan.delete_pods and plan.want_pdb
    assert plan.status.active_pod == "t1" and plan.status.active_migration is None
    fields = plan.migration_status["m"]
    assert (fields["phase"], fields["downtimeMs"], fields["transferredBytes"]) == ("Succeeded", 25, 4096)


def test_timeout_keeps_the_vm_on_the_source() -> None:
    report = MigrationReport("m", "Failed", EARLIER, NOW, 99, 2048, reason="Timeout", message="aborted")
    plan = decide_vm(vm(MIGRATING), [source(report), TARGET], HEALTHY, {}, [MIG], NOW, "x")
    assert plan.status.active_pod == "p1" and plan.status.phase == "Running"
    assert ("t1", False) in plan.delete_pods
    fields = plan.migration_status["m"]
    assert (fields["phase"], fields["failureReason"], fields["transferredBytes"]) == (
        "Failed",
        "Timeout",
        2048,
    )


def test_the_pdb_stays_while_a_migration_runs() -> None:
    plan = decide_vm(vm(MIGRATING), [source(), TARGET], HEALTHY, {}, [MIG], NOW, "x")
    assert plan.want_pdb and plan.status.active_migration is not None


def test_unschedulable_target_fails_the_migration() -> None:
    pending = PodView("t1", "target", migration="m", unschedulable="0/3 nodes: Insufficient cpu")
    plan = decide_vm(vm(MIGRATING), [source(), pending], HEALTHY, {}, [MIG], NOW, "x")
    assert plan.migration_status["m"]["failureReason"] == "TargetUnschedulable"
    assert plan.status.active_pod == "p1"


@pytest.mark.parametrize(("lost", "reason"), [("n1", "SourceLost"), ("n2", "TargetLost")])
def test_a_lost_host_fails_the_migration(lost: str, reason: str) -> None:
    nodes = {**HEALTHY, lost: NodeView(lost, "Unknown")}
    plan = decide_vm(vm(MIGRATING), [source(), TARGET], nodes, {}, [MIG], NOW, "x")
    assert plan.migration_status["m"]["failureReason"] == reason
    assert plan.make_launcher == ""  # never handed over to a target that is not running


@pytest.mark.parametrize(
    ("eviction", "disks", "evacuates"),
    [
        ("LiveMigrate", (), True),
        ("LiveMigrateIfPossible", (), True),
        ("LiveMigrateIfPossible", (Disk("d", "ephemeral", size_mib=4),), False),
        ("None", (), False),
    ],
)
def test_a_cordoned_node_is_evacuated_by_eviction_strategy(
    eviction: str, disks: tuple[Disk, ...], evacuates: bool
) -> None:
    nodes = {**HEALTHY, "n1": NodeView("n1", "True", unschedulable=True)}
    plan = decide_vm(
        vm(RUNNING, eviction, disks=disks), [PodView("p1", "launcher", node="n1")], nodes, {}, [], NOW, "x"
    )
    assert bool(plan.create_migration) == evacuates
    assert plan.want_pdb == evacuates  # no PDB: an eviction shuts the VM down (and it restarts elsewhere)


def test_the_source_handler_does_not_report_a_migrated_domain_lost() -> None:
    actions = decide_node("n1", source(), None, RUNNING, "", frozenset({"p1"}), "migrated")
    assert [a.kind for a in actions] == ["none"]
    lost = decide_node("n1", source(), None, RUNNING, "", frozenset({"p1"}), "")
    assert [(a.kind, a.state) for a in lost] == [("report", "Failed")]


def test_peer_uri_names_the_unix_transport() -> None:
    from vmcore.virt import peer_uri

    assert peer_uri("qemu:///system?socket=/x/sock") == "qemu+unix:///system?socket=/x/sock"
    assert peer_uri("qemu+tls://host-2/system") == "qemu+tls://host-2/system"
    assert peer_uri("qemu:///system") == "qemu:///system"


def test_a_vm_with_disks_boots_from_disk() -> None:
    disk = Disk("boot", "image", path="/images/a.img", shared=True)
    xml = build_domain_xml(
        DomainSpec("ns", "v", UID, VmSpec(disks=(disk,))), "qemu", {"boot": "/images/a.img"}
    )
    assert '<boot dev="hd" />' in xml
    assert "<boot" not in build_domain_xml(DomainSpec("ns", "v", UID, VmSpec()), "qemu")


def test_cli_migration_lines() -> None:
    from remediator.vm_cli import migration_line

    assert migration_line("m", {}) == "m: Pending"
    running = {
        "phase": "Running",
        "sourceNode": "n1",
        "targetNode": "n2",
        "progress": 40,
        "transferredBytes": 2**20,
    }
    assert migration_line("m", running) == "m: Running -- n1 -> n2 -- 40%, 1.0 MiB sent"
    failed = {"phase": "Failed", "sourceNode": "n1", "failureReason": "Timeout", "message": "aborted"}
    assert migration_line("m", failed) == "m: Failed -- n1 -> ? -- Timeout: aborted"
