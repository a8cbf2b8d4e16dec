"""Table-driven tests of vmcore's pure decisions: runStrategy, restarts after fences, the handler's step."""

from __future__ import annotations

import datetime as dt

import pytest

from vmcore.api import ActiveMigration, DomainEntry, VmSpec, VmStatus, parse_vm_spec
from vmcore.decisions import (
    NodeView,
    PodView,
    VmView,
    decide_node,
    decide_vm,
    live_migratable,
    recovery_order,
)
from vmcore.domain import build_domain_xml
from vmcore.errors import VmSpecError

NOW = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
EARLIER = NOW - dt.timedelta(minutes=5)
HEALTHY = {"n1": NodeView("n1", "True"), "n2": NodeView("n2", "True")}
N1_LOST = {"n1": NodeView("n1", "Unknown"), "n2": NodeView("n2", "True")}


def vm(
    strategy: str = "Always", status: VmStatus | None = None, request: str = "", priority: int = 0
) -> VmView:
    spec = VmSpec(run_strategy=strategy, priority=priority)
    return VmView("ns", "v", "0b5c1c9e-0000-4000-8000-000000000001", 1, spec, status or VmStatus(), request)


def running_on_n1(**changes: object) -> VmStatus:
    base = VmStatus(
        phase="Running",
        node_name="n1",
        active_pod="p1",
        domains={"n1": DomainEntry("p1", "Running", EARLIER)},
        present=True,
    )
    return base.with_changes(**changes)


POD_ON_N1 = [PodView("p1", "launcher", node="n1")]


@pytest.mark.parametrize(
    ("strategy", "request_", "creates"),
    [
        ("Always", "", True),
        ("RerunOnFailure", "", True),
        ("Manual", "", False),
        ("Manual", "Running", True),
        ("Halted", "", False),
        ("Halted", "Running", False),
    ],
)
def test_run_strategy_with_no_pod(strategy: str, request_: str, creates: bool) -> None:
    plan = decide_vm(vm(strategy, request=request_), [], HEALTHY, {}, [], NOW, "new")
    assert (plan.create_pod is not None) == creates
    assert (plan.status.active_pod == "new") == creates


def test_rerun_on_failure_does_not_restart_after_a_guest_shutdown() -> None:
    status = VmStatus(last_exit_reason="GuestShutdown", present=True)
    assert decide_vm(vm("RerunOnFailure", status), [], HEALTHY, {}, [], NOW, "new").create_pod is None
    status = VmStatus(last_exit_reason="Lost", present=True)
    assert decide_vm(vm("RerunOnFailure", status), [], HEALTHY, {}, [], NOW, "new").create_pod is not None


def test_halted_stops_a_running_vm() -> None:
    plan = decide_vm(vm("Halted", running_on_n1()), POD_ON_N1, HEALTHY, {}, [], NOW, "new")
    assert plan.delete_pods == [("p1", False)]
    assert plan.status.active_pod == ""


@pytest.mark.parametrize(
    ("fenced", "expect_restart", "reason"),
    [
        ({}, False, "WaitingForFence"),
        ({"n1": EARLIER - dt.timedelta(minutes=1)}, False, "WaitingForFence"),  # fence older than the domain
        ({"n1": NOW}, True, "Restarting"),
        ({"n2": NOW}, False, "WaitingForFence"),  # another node's fence proves nothing
    ],
)
def test_lost_node_restarts_only_after_a_verified_fence(
    fenced: dict[str, dt.datetime], expect_restart: bool, reason: str
) -> None:
    plan = decide_vm(vm(status=running_on_n1()), POD_ON_N1, N1_LOST, fenced, [], NOW, "new")
    assert plan.status.condition("Ready").reason == reason
    assert (("p1", True) in plan.delete_pods) == expect_restart
    assert ("n1" in plan.clear_domains) == expect_restart


def test_pod_gone_with_entry_on_lost_node_waits_then_restarts_after_fence() -> None:
    status = running_on_n1()
    waiting = decide_vm(vm(status=status), [], N1_LOST, {}, [], NOW, "new")
    assert waiting.create_pod is None
    assert waiting.status.condition("Ready").reason == "WaitingForFence"
    fenced = decide_vm(vm(status=status), [], N1_LOST, {"n1": NOW}, [], NOW, "new")
    assert fenced.create_pod is not None
    assert fenced.clear_domains == ["n1"]


def test_healthy_node_must_report_the_domain_stopped_first() -> None:
    status = running_on_n1(active_pod="")
    plan = decide_vm(vm(status=status), [], HEALTHY, {}, [], NOW, "new")
    assert plan.create_pod is None
    assert plan.status.condition("Ready").reason == "WaitingForHandler"


def test_pod_on_lost_node_without_any_domain_record_is_replaced_without_fence() -> None:
    status = running_on_n1(domains={})
    plan = decide_vm(vm(status=status), POD_ON_N1, N1_LOST, {}, [], NOW, "new")
    assert ("p1", True) in plan.delete_pods


def test_recovery_order_is_by_priority() -> None:
    vms = [vm(priority=1), vm(priority=10), vm(priority=-5)]
    assert [v.spec.priority for v in recovery_order(vms) if v.spec] == [10, 1, -5]


@pytest.mark.parametrize(
    ("spec", "migratable", "reason"),
    [
        ({}, True, "Migratable"),
        (
            {"interfaces": [{"name": "a", "network": "pod", "binding": "bridge"}]},
            False,
            "InterfaceNotLiveMigratable",
        ),
        ({"disks": [{"name": "d", "image": {"path": "/img/a.raw"}}]}, False, "DisksNotLiveMigratable"),
        ({"disks": [{"name": "d", "image": {"path": "/img/a.raw", "shared": True}}]}, True, "Migratable"),
        ({"disks": [{"name": "d", "ephemeral": {"sizeMiB": 4}}]}, False, "DisksNotLiveMigratable"),
        (
            {"hostDevices": [{"name": "g", "pciAddress": "0000:3b:00.0"}]},
            False,
            "HostDeviceNotLiveMigratable",
        ),
    ],
)
def test_live_migratable(spec: dict[str, object], migratable: bool, reason: str) -> None:
    result = live_migratable(parse_vm_spec(spec))
    assert (result.migratable, result.reason) == (migratable, reason)


@pytest.mark.parametrize(
    "spec",
    [
        {"memory": {"guest": "16Mi"}},
        {"runStrategy": "Sometimes"},
        {"disks": [{"name": "d", "image": {"path": "relative.img"}}]},
        {"disks": [{"name": "d"}]},
        {"interfaces": [{"name": "a", "network": "storage", "binding": "bridge"}]},  # no MAC
        {"interfaces": [{"name": "a", "network": "pod", "macAddress": "01:00:00:00:00:01"}]},  # multicast
    ],
)
def test_invalid_specs_are_rejected(spec: dict[str, object]) -> None:
    with pytest.raises(VmSpecError):
        parse_vm_spec(spec)


STATUS = VmStatus(active_pod="p1", present=True)
LAUNCHER = PodView("p1", "launcher", node="n1")


@pytest.mark.parametrize(
    ("launcher", "status", "domain", "written", "event", "kinds"),
    [
        (LAUNCHER, STATUS, "", frozenset(), "", ["start"]),
        (
            LAUNCHER,
            STATUS.with_changes(domains={"n1": DomainEntry("p1", "Running")}),
            "running",
            frozenset(),
            "",
            ["none"],
        ),
        # A reboot: the entry says Running, the domain is only defined: reported lost, never resumed.
        (
            LAUNCHER,
            STATUS.with_changes(domains={"n1": DomainEntry("p1", "Running")}),
            "shutoff",
            frozenset(),
            "",
            ["report", "destroy"],
        ),
        # Starting recorded by a previous incarnation of the handler: lost, not started again.
        (
            LAUNCHER,
            STATUS.with_changes(domains={"n1": DomainEntry("p1", "Starting")}),
            "",
            frozenset(),
            "",
            ["report"],
        ),
        (
            LAUNCHER,
            STATUS.with_changes(domains={"n1": DomainEntry("p1", "Starting")}),
            "",
            frozenset({"p1"}),
            "",
            ["start"],
        ),
        # Not the designated pod (the controller moved on): destroy whatever runs, clear the entry.
        (
            PodView("old", "launcher", node="n1"),
            STATUS.with_changes(domains={"n1": DomainEntry("old", "Running")}),
            "running",
            frozenset(),
            "",
            ["destroy", "clear-entry"],
        ),
        (None, VmStatus(), "running", frozenset(), "", ["destroy"]),
        (
            LAUNCHER,
            STATUS.with_changes(domains={"n1": DomainEntry("p1", "Running")}),
            "",
            frozenset(),
            "shutdown",
            ["report"],
        ),
    ],
)
def test_handler_step(
    launcher: PodView | None,
    status: VmStatus,
    domain: str,
    written: frozenset[str],
    event: str,
    kinds: list[str],
) -> None:
    assert [a.kind for a in decide_node("n1", launcher, None, status, domain, written, event)] == kinds


def test_handler_prepares_the_target_of_the_active_migration() -> None:
    status = STATUS.with_changes(active_migration=ActiveMigration("m", "t1", "n0"))
    target = PodView("t1", "target", node="n1")
    assert [a.kind for a in decide_node("n1", None, target, status, "", frozenset(), "")] == [
        "prepare-target"
    ]


def test_domain_xml_is_headless_and_named_after_the_vm() -> None:
    from vmcore.api import DomainSpec

    xml = build_domain_xml(
        DomainSpec("ns", "v", "0b5c1c9e-0000-4000-8000-000000000001", VmSpec(memory_mib=64)), "kvm"
    )
    assert "<name>ns_v</name>" in xml and '<memory unit="MiB">64</memory>' in xml
    assert "graphics" not in xml and '<serial type="null">' in xml
