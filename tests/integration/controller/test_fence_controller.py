"""The controller as a whole: leader election between two replicas, controller-wide dry run, refusing
to fence its own node, the ``remediator fence`` command, and the measured figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from remediator import fence_controller as fc
from remediator.lab.bmc import ScriptedRedfishBmc, SushyEmulator
from tests.integration.conftest import TEST_DOMAIN_UUID, RunningLab
from tests.integration.controller.conftest import (
    REPO,
    Controller,
    MakeNode,
    create_fence,
    redfish_level,
    resets,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_two_replicas_never_act_at_once(
    lab: RunningLab,
    controller: Controller,
    make_node: MakeNode,
    secret: str,
    scripted: ScriptedRedfishBmc,
    tmp_path: Path,
) -> None:
    standby = Controller(lab, tmp_path)
    standby.proc = subprocess.Popen(  # started by hand: it must not wait to lead
        [sys.executable, "-m", "remediator.controller_cli", "run", "--kubeconfig", str(lab.paths.kubeconfig),
         "--namespace", "remediator-system", "--identity", "standby", "--lease-duration", "4"],
        stdout=(tmp_path / "standby.log").open("wb"), stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip
    standby.log_path = tmp_path / "standby.log"
    try:
        wait_for(lambda: "standing by" in standby.log(), 20, "standby replica waiting for the Lease")
        node = make_node(scripted.systems["1"].uuid)
        node.fencing([redfish_level(scripted.address())])
        first = wait_done(lab, create_fence(lab, node.name))
        assert first["phase"] == "Succeeded" and resets(scripted) == 1
        assert (
            controller.leading(controller.identity) and "Fence" not in standby.log().split("standing by")[-1]
        )
        # The leader dies without releasing its Lease: the standby takes over only after it expired.
        killed = time.monotonic()
        controller.kill()
        wait_for(lambda: controller.leading("standby"), 20, "standby leading")
        took = time.monotonic() - killed
        assert took >= 3.0, f"took over after {took:.1f}s, before the 4 s Lease could expire"
        node2 = make_node(scripted.systems["1"].uuid)
        node2.fencing([redfish_level(scripted.address())])
        scripted.systems["1"].power_on = True
        second = wait_done(lab, create_fence(lab, node2.name))
        assert second["phase"] == "Succeeded"
    finally:
        standby.stop()
    # The fixture restarts the default controller; it gets the released Lease at once.


def test_controller_dry_run_and_own_node(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    node = make_node(scripted.systems["1"].uuid)
    node.fencing([redfish_level(scripted.address())])
    own = make_node(scripted.systems["1"].uuid)
    controller.kill()
    controller.start(extra=["--dry-run", "--node-name", own.name])
    try:
        status = wait_done(lab, create_fence(lab, node.name, afterFence="Remove"))
        assert status["phase"] == "Succeeded" and status["dryRun"] and status["reason"] == "DryRunCompleted"
        assert node.read() is not None and resets(scripted) == 0 and scripted.systems["1"].power_on
        refused = wait_done(lab, create_fence(lab, own.name))
        assert refused["phase"] == "Failed" and refused["reason"] == "SelfFence"
    finally:
        controller.kill()


def _cli(lab: RunningLab, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KUBECONFIG=str(lab.paths.kubeconfig))
    return subprocess.run(
        [sys.executable, "-m", "remediator.controller_cli", "fence", *argv],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip


def test_fence_command_follows_and_fails_non_zero(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc
) -> None:
    node = make_node(scripted.systems["1"].uuid)
    node.fencing([redfish_level(scripted.address())])
    done = _cli(lab, node.name, "--action", "off", "--after", "keep", "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    for phase in ("Pending", "Isolating", "PoweringOff", "Verified", "Releasing"):
        assert phase in done.stdout
    assert (
        "Succeeded in" in done.stdout and "attempt: PowerOff via level 1 redfish #1: Succeeded" in done.stdout
    )
    failed = _cli(lab, "no-such-node-xyz", "--wait", "--json")
    assert failed.returncode == 1
    final = json.loads(failed.stdout)
    assert final["status"]["reason"] == "NodeNotFound"
    invalid = _cli(lab, node.name, "--action", "reboot", "--after", "keep")
    assert invalid.returncode == 1 and "afterFence must be PowerOn or Remove" in invalid.stderr


def test_measure_controller_time_and_time_to_verified(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, sushy_on: SushyEmulator
) -> None:
    """Prints the figures (targets: controller's own time <= 1 s; creation -> FenceVerified <= 3 s)."""
    node = make_node(TEST_DOMAIN_UUID)
    node.fencing([redfish_level(sushy_on.address())])
    api = client.CustomObjectsApi(lab.api)
    stream = watch.Watch()  # type: ignore[no-untyped-call]
    start = time.monotonic()
    name = create_fence(lab, node.name)
    verified_at = done_at = None
    status: dict[str, Any] = {}
    for event in stream.stream(  # type: ignore[no-untyped-call]
        api.list_cluster_custom_object, fc.GROUP, fc.VERSION, fc.PLURAL,
        field_selector=f"metadata.name={name}", timeout_seconds=30,
    ):  # fmt: skip
        status = event["object"].get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        if verified_at is None and conditions.get("FenceVerified") == "True":
            verified_at = time.monotonic() - start
        if status.get("phase") in ("Succeeded", "Failed"):
            done_at = time.monotonic() - start
            stream.stop()  # type: ignore[no-untyped-call]
    assert status.get("phase") == "Succeeded" and verified_at is not None and done_at is not None
    bmc = status["timing"]["bmcSeconds"]
    own = done_at - bmc - status["timing"]["waitSeconds"]
    phases = ", ".join(f"{p['phase']} {p.get('durationSeconds', 0):.3f}s" for p in status["phases"])
    print(
        f"\nFIGURES redfish sushy-emulator: creation->FenceVerified {verified_at:.3f}s; "
        f"creation->Succeeded {done_at:.3f}s; BMC {bmc:.3f}s; controller's own time {own:.3f}s; "
        f"phases: {phases}"
    )
