"""The Fence state machine, table-driven: (spec, state, observation) -> step, and the state round trip."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from remediator import workflow as wf
from remediator.workflow import (
    Command,
    FenceSpec,
    FenceState,
    LevelInfo,
    NodeFacts,
    Observation,
    Op,
    Phase,
    Transition,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
UUID = "11111111-2222-3333-4444-555555555555"
NODE = NodeFacts(system_uuid=UUID, boot_id="boot-1", ready="True", ready_heartbeat=T0)
L0 = LevelInfo(0, "redfish", "level 1 redfish redfish://bmc", 2)
L1 = LevelInfo(1, "ipmi", "level 2 ipmi ipmi://bmc", 1)
LEVELS = (L0, L1)
SPEC = FenceSpec("worker-1")


def obs(**kw: object) -> Observation:
    base: dict[str, object] = {"now": T0, "node": NODE, "levels": LEVELS}
    base.update(kw)
    return Observation(**base)


def started(spec: FenceSpec = SPEC, dry: bool = False) -> FenceState:
    return wf.begin(FenceState(), spec, T0, 1, dry)


def at(phase: Phase, **facts: object) -> FenceState:
    state = started()
    state = replace(state, phase=phase, target_uuid=UUID, target_boot_id="boot-1")
    return replace(state, **facts)


def attempt(
    op: Op, level: LevelInfo, n: int, ok: bool, err: str | None = None, retry: bool = True
) -> wf.Attempt:
    return wf.Attempt(op, level.index, level.type, level.description, n, T0, 0.1, ok, True, err, "", retry)


def failed_off(*specs: tuple[LevelInfo, int, str, bool]) -> tuple[wf.Attempt, ...]:
    return tuple(attempt(Op.POWER_OFF, lv, n, False, err, retry) for lv, n, err, retry in specs)


# --- next_step: one row per situation ------------------------------------------------------------

PENDING_CASES = [
    ("self fence", obs(own_node="worker-1"), Transition, "SelfFence"),
    ("another active fence", obs(competing=("f-1 (PoweringOff)",)), Transition, "AlreadyFencing"),
    ("unknown node", obs(node=None), Transition, "NodeNotFound"),
    ("no NodeFencing", obs(levels=(), config_error=("NoNodeFencing", "none")), Transition, "NoNodeFencing"),
    ("secrets missing", obs(config_error=("CredentialsNotFound", "x")), Transition, "CredentialsNotFound"),
    ("empty levels", obs(levels=()), Transition, "NoFenceLevels"),
    ("node without uuid", obs(node=NodeFacts(system_uuid=None)), Transition, "NodeIdentityUnknown"),
    ("all good", obs(), Transition, "Isolating"),
]


@pytest.mark.parametrize(
    ("case", "observation", "kind", "reason"), PENDING_CASES, ids=[c[0] for c in PENDING_CASES]
)
def test_pending(case: str, observation: Observation, kind: type, reason: str) -> None:
    step = wf.next_step(SPEC, started(), observation)
    assert isinstance(step, kind)
    assert isinstance(step, Transition) and step.reason == reason
    if reason == "Isolating":
        assert step.phase is Phase.ISOLATING and step.target_uuid == UUID
    else:
        assert step.phase is Phase.FAILED


def test_self_fence_wins_over_everything_else() -> None:
    step = wf.next_step(SPEC, started(), obs(own_node="worker-1", node=None, competing=("x",)))
    assert isinstance(step, Transition) and step.reason == "SelfFence"


OFF = Op.POWER_OFF
ON = Op.POWER_ON

STEP_CASES: list[tuple[str, FenceSpec, FenceState, Observation, object]] = [
    ("isolate first", SPEC, at(Phase.ISOLATING), obs(), Command(Op.ISOLATE)),
    ("isolated -> powering off", SPEC, at(Phase.ISOLATING, isolated=T0), obs(), Phase.POWERING_OFF),
    ("first attempt, first level", SPEC, at(Phase.POWERING_OFF), obs(), Command(OFF, 0, 1)),
    (
        "retry the same level while attempts remain",
        SPEC,
        at(Phase.POWERING_OFF, attempts=failed_off((L0, 1, "BmcTimeout", True))),
        obs(),
        Command(OFF, 0, 2),
    ),
    (
        "escalate after the level's attempts",
        SPEC,
        at(Phase.POWERING_OFF, attempts=failed_off((L0, 1, "BmcTimeout", True), (L0, 2, "BmcTimeout", True))),
        obs(),
        Command(OFF, 1, 1),
    ),
    (
        "escalate at once on a non-retryable error",
        SPEC,
        at(Phase.POWERING_OFF, attempts=failed_off((L0, 1, "BmcAuthenticationFailed", False))),
        obs(),
        Command(OFF, 1, 1),
    ),
    (
        "every level failed",
        SPEC,
        at(
            Phase.POWERING_OFF,
            attempts=failed_off(
                (L0, 1, "BmcTimeout", True),
                (L0, 2, "BmcTimeout", True),
                (L1, 1, "PowerStateNotReached", True),
            ),
        ),
        obs(),
        "AllLevelsFailed",
    ),
    (
        "identity mismatch ends it, no escalation",
        SPEC,
        at(Phase.POWERING_OFF, attempts=failed_off((L0, 1, "IdentityMismatch", False))),
        obs(),
        "IdentityMismatch",
    ),
    (
        "resume an attempt whose command was sent: re-verify",
        SPEC,
        at(Phase.POWERING_OFF, in_flight=wf.InFlight(OFF, 0, 1, T0, command_sent=T0, resumes=1)),
        obs(),
        Command(OFF, 0, 1, reverify=True, resumed=True),
    ),
    (
        "resume an attempt not yet sent: run it again (reads first)",
        SPEC,
        at(Phase.POWERING_OFF, in_flight=wf.InFlight(OFF, 1, 1, T0, resumes=1)),
        obs(),
        Command(OFF, 1, 1, reverify=False, resumed=True),
    ),
    (
        "verified -> Verified",
        SPEC,
        at(Phase.POWERING_OFF, off_verified=T0, off_level=0),
        obs(),
        Phase.VERIFIED,
    ),
    (
        "a verified power-off is never sent again, whatever the attempts say",
        SPEC,
        at(Phase.POWERING_OFF, off_verified=T0, in_flight=wf.InFlight(OFF, 0, 1, T0, command_sent=T0)),
        obs(),
        Phase.VERIFIED,
    ),
    ("Verified -> Releasing", SPEC, at(Phase.VERIFIED, off_verified=T0), obs(), Phase.RELEASING),
    ("release", SPEC, at(Phase.RELEASING, off_verified=T0), obs(), Command(Op.RELEASE)),
    (
        "Keep: done after release",
        SPEC,
        at(Phase.RELEASING, off_verified=T0, released=T0),
        obs(),
        Phase.SUCCEEDED,
    ),
    (
        "Remove: to Removing",
        FenceSpec("worker-1", after=wf.AfterFence.REMOVE),
        at(Phase.RELEASING, off_verified=T0, released=T0),
        obs(),
        Phase.REMOVING,
    ),
    (
        "PowerOn: to Recovering",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RELEASING, off_verified=T0, released=T0),
        obs(),
        Phase.RECOVERING,
    ),
    (
        "Recovering: power on through the level that fenced",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RECOVERING, off_verified=T0, off_level=1, released=T0),
        obs(),
        Command(ON, 1, 1),
    ),
    (
        "Recovering: stale Ready (heartbeat from before the fence) is not a rejoin",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(
            Phase.RECOVERING,
            off_verified=T0 + timedelta(seconds=1),
            released=T0,
            on_verified=T0 + timedelta(seconds=2),
        ),
        obs(now=T0 + timedelta(seconds=3)),
        wf.Wait,
    ),
    (
        "Recovering: fresh heartbeat -> restore",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RECOVERING, off_verified=T0, released=T0, on_verified=T0),
        obs(node=replace(NODE, ready_heartbeat=T0 + timedelta(seconds=5))),
        Command(Op.RESTORE),
    ),
    (
        "Recovering: new boot ID -> restore",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RECOVERING, off_verified=T0 + timedelta(seconds=9), released=T0, on_verified=T0),
        obs(node=replace(NODE, boot_id="boot-2")),
        Command(Op.RESTORE),
    ),
    (
        "Recovering: node Lease renewed after the verified power-off -> restore",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RECOVERING, off_verified=T0, released=T0, on_verified=T0),
        obs(node=replace(NODE, lease_renewed=T0 + timedelta(seconds=1))),
        Command(Op.RESTORE),
    ),
    (
        "Recovering: a Lease renewal from before the power-off is no sign of the new boot",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RECOVERING, off_verified=T0, released=T0, on_verified=T0),
        obs(node=replace(NODE, lease_renewed=T0 - timedelta(seconds=1))),
        wf.Wait,
    ),
    (
        "Recovering: timeout",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON, recovery_timeout_s=10),
        at(Phase.RECOVERING, off_verified=T0, released=T0, on_verified=T0),
        obs(now=T0 + timedelta(seconds=11), node=replace(NODE, ready="Unknown")),
        "NodeNotReady",
    ),
    (
        "Recovering: restored -> Succeeded",
        FenceSpec("worker-1", after=wf.AfterFence.POWER_ON),
        at(Phase.RECOVERING, off_verified=T0, released=T0, on_verified=T0, restored=T0),
        obs(),
        Phase.SUCCEEDED,
    ),
    (
        "Removing: delete the node",
        FenceSpec("worker-1", after=wf.AfterFence.REMOVE),
        at(Phase.REMOVING, off_verified=T0, released=T0),
        obs(),
        Command(Op.DELETE_NODE),
    ),
    (
        "Removing + Reboot: power on after the delete",
        FenceSpec("worker-1", action=wf.Action.REBOOT, after=wf.AfterFence.REMOVE),
        at(Phase.REMOVING, off_verified=T0, off_level=0, released=T0, node_deleted=T0),
        obs(node=None),
        Command(ON, 0, 1),
    ),
    (
        "Removing: done",
        FenceSpec("worker-1", after=wf.AfterFence.REMOVE),
        at(Phase.REMOVING, off_verified=T0, released=T0, node_deleted=T0),
        obs(node=None),
        Phase.SUCCEEDED,
    ),
    ("terminal: nothing to do", SPEC, at(Phase.SUCCEEDED), obs(), wf.DONE),
    ("failed: nothing to do", SPEC, at(Phase.FAILED), obs(), wf.DONE),
]


@pytest.mark.parametrize(
    ("case", "spec", "state", "observation", "expected"), STEP_CASES, ids=[c[0] for c in STEP_CASES]
)
def test_next_step(
    case: str, spec: FenceSpec, state: FenceState, observation: Observation, expected: object
) -> None:
    step = wf.next_step(spec, state, observation)
    if isinstance(expected, Phase):
        assert isinstance(step, Transition) and step.phase is expected
    elif isinstance(expected, str):
        assert isinstance(step, Transition) and step.phase is Phase.FAILED and step.reason == expected
    elif isinstance(expected, type):
        assert isinstance(step, expected)
    else:
        assert step == expected


def test_nothing_is_released_before_verified() -> None:
    """From every phase before Verified, no step ever releases, whatever the observation."""
    for phase in (Phase.PENDING, Phase.ISOLATING, Phase.POWERING_OFF):
        for observation in (obs(), obs(node=None), obs(levels=())):
            state = at(phase, isolated=T0)
            step = wf.next_step(SPEC, state, observation)
            assert not (isinstance(step, Command) and step.op is Op.RELEASE)
            assert not (isinstance(step, Transition) and step.phase in (Phase.RELEASING, Phase.VERIFIED))


def test_failures_mention_the_node_left_isolated() -> None:
    state = at(Phase.POWERING_OFF, attempts=failed_off((L1, 1, "BmcTimeout", True)))
    step = wf.next_step(SPEC, state, obs(levels=(L1,)))
    assert isinstance(step, Transition) and "left isolated, not released" in step.message
    assert "BmcTimeout" in step.message


# --- dry run -------------------------------------------------------------------------------------


def test_dry_run_probes_then_succeeds() -> None:
    state = started(dry=True)
    assert wf.next_step(SPEC, state, obs()) == Command(Op.PROBE)
    probe = wf.ProbeOutcome(((L0, None, "reachable"), (L1, "CredentialsNotFound", "no secret")), 3, 1)
    state = wf.record_probe(SPEC, state, probe)
    assert any("force-delete 3 pod(s), delete 1 VolumeAttachment(s)" in line for line in state.plan)
    step = wf.next_step(SPEC, state, obs())
    assert isinstance(step, Transition) and step.phase is Phase.SUCCEEDED and step.reason == "DryRunCompleted"


@pytest.mark.parametrize(
    ("results", "reason"),
    [
        (((L0, "BmcUnreachable", "x"), (L1, "CredentialsNotFound", "y")), "DryRunCheckFailed"),
        (((L0, None, "ok"), (L1, "IdentityMismatch", "other host")), "IdentityMismatch"),
    ],
)
def test_dry_run_failures(results: tuple[tuple[LevelInfo, str | None, str], ...], reason: str) -> None:
    state = wf.record_probe(SPEC, started(dry=True), wf.ProbeOutcome(results))
    step = wf.next_step(SPEC, state, obs())
    assert isinstance(step, Transition) and step.phase is Phase.FAILED and step.reason == reason


def test_controller_dry_run_makes_every_fence_a_dry_run() -> None:
    assert started(dry=True).dry_run and not started(dry=False).dry_run


# --- applying steps and outcomes -----------------------------------------------------------------


def test_transitions_keep_a_timeline_and_conditions() -> None:
    state = started()
    state = wf.transition(state, Transition(Phase.ISOLATING, "Isolating", "m"), T0 + timedelta(seconds=1))
    state = wf.transition(
        state, Transition(Phase.FAILED, "AllLevelsFailed", "bad"), T0 + timedelta(seconds=3)
    )
    assert [(p.phase, p.finished) for p in state.phases] == [
        (Phase.PENDING, T0 + timedelta(seconds=1)),
        (Phase.ISOLATING, T0 + timedelta(seconds=3)),
        (Phase.FAILED, T0 + timedelta(seconds=3)),
    ]
    conditions = {c.type: (c.status, c.reason) for c in state.conditions}
    assert conditions == {
        "Processing": ("False", "Failed"),
        "FenceVerified": ("False", "AllLevelsFailed"),
        "Succeeded": ("False", "AllLevelsFailed"),
    }
    assert state.completed == T0 + timedelta(seconds=3)


def test_condition_transition_time_changes_only_with_status() -> None:
    c1 = wf.set_condition((), "Processing", "True", "A", "", T0)
    c2 = wf.set_condition(c1, "Processing", "True", "B", "", T0 + timedelta(seconds=5))
    c3 = wf.set_condition(c2, "Processing", "False", "C", "", T0 + timedelta(seconds=9))
    assert c2[0].last_transition == T0 and c2[0].reason == "B"
    assert c3[0].last_transition == T0 + timedelta(seconds=9)


def test_power_attempt_lifecycle_and_resume() -> None:
    state = at(Phase.POWERING_OFF)
    cmd = Command(OFF, 0, 1)
    state = wf.begin_power(state, cmd, T0)
    assert state.in_flight is not None and state.in_flight.command_sent is None
    state = wf.command_sent(state, T0)
    # the controller dies here; the restarted one resumes
    state = wf.resume(FenceState.from_status(state.to_status()))
    assert state.in_flight is not None and state.in_flight.resumes == 1 and state.resumes == 1
    step = wf.next_step(SPEC, state, obs())
    assert step == Command(OFF, 0, 1, reverify=True, resumed=True)
    assert wf.begin_power(state, step, T0) == state  # keeps commandSentAt
    outcome = wf.PowerOutcome(OFF, L0, "redfish x", 1, T0, 0.3, True, True, resumed=True)
    state = wf.record_power(state, outcome, T0 + timedelta(seconds=1))
    assert (
        state.off_verified is not None and state.in_flight is None and state.bmc_seconds == pytest.approx(0.3)
    )
    assert state.condition("FenceVerified") is not None
    assert state.condition("FenceVerified").status == "True"


def test_an_attempt_resumed_too_often_counts_as_failed() -> None:
    state = at(Phase.POWERING_OFF, in_flight=wf.InFlight(OFF, 0, 1, T0, resumes=wf.MAX_RESUMES + 1))
    state = wf.abandon_if_needed(state, LEVELS, T0)
    assert state.in_flight is None and state.attempts[-1].error_class == "Interrupted"
    assert wf.next_step(SPEC, state, obs()) == Command(OFF, 0, 2)


def test_status_round_trip() -> None:
    state = at(
        Phase.RECOVERING,
        isolated=T0,
        off_verified=T0,
        off_level=1,
        released=T0,
        pods_deleted=2,
        attempts=failed_off((L0, 1, "BmcTimeout", True)),
        in_flight=wf.InFlight(ON, 1, 1, T0, command_sent=T0),
        plan=("a", "b"),
        bmc_seconds=1.25,
    )
    assert FenceState.from_status(state.to_status()) == state
    assert FenceState.from_status(None) == FenceState()


def test_describe_left_state() -> None:
    text = wf.describe_left_state(SPEC, at(Phase.POWERING_OFF, isolated=T0))
    assert "still cordoned" in text and "NOT verified off" in text and "nothing was released" in text
    sent = at(Phase.POWERING_OFF, isolated=T0, in_flight=wf.InFlight(OFF, 0, 1, T0, command_sent=T0))
    assert "sent but NOT verified" in wf.describe_left_state(SPEC, sent)
    done = wf.describe_left_state(SPEC, at(Phase.RELEASING, isolated=T0, off_verified=T0, released=T0))
    assert "power-off was verified" in done and "released" in done
    assert "not changed" in wf.describe_left_state(SPEC, at(Phase.PENDING))


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        ({"nodeName": "n"}, True),
        ({"nodeName": "n", "action": "Reboot", "afterFence": "PowerOn"}, True),
        ({}, False),
        ({"nodeName": "n", "action": "Explode"}, False),
    ],
)
def test_spec_parsing(raw: dict[str, object], ok: bool) -> None:
    if ok:
        spec = FenceSpec.from_dict(raw)
        assert spec.node_name == "n"
        assert spec.powers_on is (raw.get("action") == "Reboot")
    else:
        with pytest.raises(ValueError):
            FenceSpec.from_dict(raw)
