"""Kill the controller (SIGKILL) at every phase; a restarted controller finishes the fence and never
repeats a power action that was already verified."""

from __future__ import annotations

import pytest

from remediator.lab.bmc import ScriptedRedfishBmc
from tests.integration.conftest import RunningLab
from tests.integration.controller.conftest import (
    Controller,
    HostAgent,
    MakeNode,
    create_fence,
    fence_status,
    redfish_level,
    resets,
    wait_done,
    wait_for,
)

pytestmark = pytest.mark.integration

# (pause point, afterFence, Reset POSTs expected in all: ForceOff once, plus On once for PowerOn)
KILL_POINTS = [
    ("Pending", "Keep", 1),
    ("Isolating", "Keep", 1),
    ("PoweringOff", "Keep", 1),
    ("PoweringOff:sent", "Keep", 1),
    ("Verified", "Keep", 1),
    ("Releasing", "Keep", 1),
    ("Recovering", "PowerOn", 2),
    ("Removing", "Remove", 1),
]


@pytest.mark.parametrize(("point", "after", "expected_resets"), KILL_POINTS, ids=[p[0] for p in KILL_POINTS])
def test_killed_at_every_phase(
    lab: RunningLab, controller: Controller, make_node: MakeNode, secret: str, scripted: ScriptedRedfishBmc,
    point: str, after: str, expected_resets: int,
) -> None:  # fmt: skip
    system = scripted.systems["1"]
    node = make_node(system.uuid)
    node.fencing([redfish_level(scripted.address())])
    controller.kill()
    controller.start(pause_at=point)
    with HostAgent(node, system.current_power):
        name = create_fence(lab, node.name, afterFence=after)
        phase = point.split(":", maxsplit=1)[0]

        def reached() -> bool:
            status = fence_status(lab, name)
            if status.get("phase") != phase:
                return False
            return point != "PoweringOff:sent" or bool((status.get("inFlight") or {}).get("commandSentAt"))

        wait_for(reached, 20, f"Fence paused at {point}")
        before = fence_status(lab, name)
        controller.kill()
        assert not controller.running()
        controller.start()
        status = wait_done(lab, name)
    assert status["phase"] == "Succeeded", status
    assert status["timing"]["resumes"] == 1
    # A power action verified before the kill is never repeated; one sent but not yet verified is
    # re-read, not re-sent.
    assert resets(scripted) == expected_resets, scripted.requests
    offs = [a for a in status["attempts"] if a["operation"] == "PowerOff"]
    assert len(offs) == 1 and offs[0]["result"] == "Succeeded"
    if point == "PoweringOff:sent":
        assert before["inFlight"]["commandSentAt"] and offs[0]["resumed"]
    phases = [p["phase"] for p in status["phases"]]
    assert phases.count(phase) == 1, phases  # the timeline is continued, not restarted
