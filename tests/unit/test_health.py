"""Table-driven tests of the pure health policy (remediator.health)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from remediator.health import (
    EXCLUDE_LABEL,
    FenceOutcome,
    LabelSelector,
    Memory,
    NodeState,
    NodeView,
    Policy,
    Remediation,
    Threshold,
    UnhealthyCondition,
    evaluate,
    memory_from_status,
    memory_to_status,
    owner_of_overlaps,
    parse_duration,
    parse_policy,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
S = timedelta(seconds=1)
RULES = (UnhealthyCondition("Ready", "Unknown", 10 * S), UnhealthyCondition("Ready", "False", 30 * S))


def node(name: str, ready: str = "True", since_s: float = 600, **labels: str) -> NodeView:
    return NodeView(name, dict(labels), {"Ready": (ready, NOW - since_s * S)})


def policy(**kw: object) -> Policy:
    base: dict[str, object] = {"name": "p", "unhealthy_conditions": RULES, "min_healthy": Threshold(51, True)}
    base.update(kw)
    return Policy(**base)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300s", 300), ("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1.5s", 1.5), ("2m10s", 130)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "m5", "5 minutes", "-3s", "1d"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("raw", "total", "up", "expected"),
    [(2, 10, True, 2), ("51%", 3, True, 2), ("51%", 3, False, 1), ("50%", 4, True, 2), ("100%", 7, True, 7)],
)
def test_threshold_scaling(raw: int | str, total: int, up: bool, expected: int) -> None:
    assert Threshold.parse(raw).scaled(total, round_up=up) == expected


@pytest.mark.parametrize("raw", ["51", "x%", "101%", -1, "5.5%"])
def test_threshold_rejects_or_parses_plain(raw: int | str) -> None:
    if raw == "51":
        assert Threshold.parse(raw) == Threshold(51)
    else:
        with pytest.raises(ValueError):
            Threshold.parse(raw)


@pytest.mark.parametrize(
    ("ready", "since_s", "state", "requeue"),
    [
        ("True", 600, NodeState.HEALTHY, None),
        ("Unknown", 4, NodeState.PENDING, 6.0),  # requeued exactly when the 10 s elapse
        ("Unknown", 10, NodeState.UNHEALTHY, None),
        ("Unknown", 11, NodeState.UNHEALTHY, None),
        ("False", 20, NodeState.PENDING, 10.0),
        ("False", 31, NodeState.UNHEALTHY, None),
    ],
)
def test_node_states_and_exact_requeue(
    ready: str, since_s: float, state: NodeState, requeue: float | None
) -> None:
    nodes = [node("a", ready, since_s), node("b"), node("c")]
    verdict = evaluate(policy(), nodes, Memory(), NOW)
    assert verdict.nodes[0].state is state
    assert verdict.requeue_after == requeue
    assert [c.node for c in verdict.create] == (["a"] if state is NodeState.UNHEALTHY else [])


def test_signals_say_why() -> None:
    verdict = evaluate(policy(), [node("a", "Unknown", 12), node("b"), node("c")], Memory(), NOW)
    assert verdict.create[0].signals == ("Ready=Unknown for 12.0s (>= 10s)",)
    assert verdict.create[0].reason.startswith("NodeHealthCheck p: Ready=Unknown")


def test_flapping_node_is_never_fenced() -> None:
    # Each transition resets lastTransitionTime: the duration never elapses.
    for since in (3, 7, 9.9):
        verdict = evaluate(policy(), [node("a", "Unknown", since), node("b"), node("c")], Memory(), NOW)
        assert verdict.create == ()


@pytest.mark.parametrize(
    ("gate", "failing", "allowed"),
    [
        ({"min_healthy": Threshold(51, True)}, 1, True),
        ({"min_healthy": Threshold(51, True)}, 2, False),
        ({"min_healthy": None, "max_unhealthy": Threshold(1)}, 1, True),
        ({"min_healthy": None, "max_unhealthy": Threshold(1)}, 2, False),
        ({"min_healthy": None, "max_unhealthy": Threshold(40, True)}, 2, False),
        ({"min_healthy": Threshold(0)}, 3, True),
    ],
)
def test_storm_gate(gate: dict[str, object], failing: int, allowed: bool) -> None:
    nodes = [node(n, "Unknown" if i < failing else "True", 60) for i, n in enumerate("abc")]
    verdict = evaluate(policy(**gate), nodes, Memory(), NOW)
    assert (len(verdict.create) == failing) is allowed
    if not allowed:
        assert verdict.create == ()
        assert verdict.blocked is not None and verdict.blocked.startswith("StormActive")
        assert verdict.storm_started and verdict.memory.storm_active


def test_nodes_failing_together_are_a_storm_before_their_durations_elapse() -> None:
    # a crossed its duration; b failed a second later and has not yet: 2 of 3 failing is a storm.
    nodes = [node("a", "Unknown", 10.5), node("b", "Unknown", 9.5), node("c")]
    verdict = evaluate(policy(), nodes, Memory(), NOW)
    assert verdict.create == ()
    assert (
        verdict.blocked == "StormActive: 1 of 3 nodes unhealthy and 1 about to be, 1 healthy (minHealthy 51%)"
    )


def test_storm_cooldown_then_resume() -> None:
    p = policy(storm_cooldown=20 * S)
    storm = Memory(storm_active=True)
    nodes = [node("a", "Unknown", 60), node("b"), node("c")]
    ended = evaluate(p, nodes, storm, NOW)
    assert ended.storm_ended and ended.create == ()
    assert ended.blocked is not None and ended.blocked.startswith("StormCooldown")
    assert ended.requeue_after == 20.0
    later = evaluate(p, nodes, ended.memory, NOW + 20 * S)
    assert [c.node for c in later.create] == ["a"]


def test_pause_blocks_new_fences_but_keeps_following_old_ones() -> None:
    rem = Remediation("b", "fence-b", NOW - 5 * S)
    memory = Memory(remediations={"b": rem})
    nodes = [node("a", "Unknown", 60), node("b", "Unknown", 60), node("c"), node("d"), node("e")]
    verdict = evaluate(
        policy(pause=True), nodes, memory, NOW, fence_outcomes={"fence-b": FenceOutcome.ACTIVE}
    )
    assert verdict.create == ()
    assert verdict.blocked == "Paused: spec.pause is true"
    assert "b" in verdict.memory.remediations


def test_excluded_and_overlapping_nodes_are_never_remediated() -> None:
    nodes = [
        node("a", "Unknown", 60, **{EXCLUDE_LABEL: "true"}),
        node("b", "Unknown", 60),
        node("c"),
        node("d"),
    ]
    verdict = evaluate(policy(), nodes, Memory(), NOW, owned_elsewhere=frozenset({"b"}))
    assert verdict.create == ()
    assert {v.node: v.state for v in verdict.nodes}["a"] is NodeState.EXCLUDED
    assert {v.node: v.state for v in verdict.nodes}["b"] is NodeState.OWNED_ELSEWHERE
    assert verdict.observed == 2


def test_control_plane_nodes_one_at_a_time() -> None:
    cp = {"node-role.kubernetes.io/control-plane": ""}
    nodes = [node("cp1", "Unknown", 60, **cp), node("cp2", "Unknown", 60, **cp)] + [
        node(f"w{i}") for i in range(6)
    ]
    first = evaluate(policy(), nodes, Memory(), NOW)
    assert [c.node for c in first.create] == ["cp1"]
    memory = Memory(remediations={"cp1": Remediation("cp1", "f1", NOW)})
    busy = evaluate(policy(), nodes, memory, NOW, fence_outcomes={"f1": FenceOutcome.ACTIVE})
    assert busy.create == ()


def test_no_second_fence_while_one_is_active_and_escalation_after_timeout() -> None:
    memory = Memory(remediations={"a": Remediation("a", "f1", NOW - 30 * S)})
    nodes = [node("a", "Unknown", 60), node("b"), node("c")]
    p = policy(escalation_timeout=60 * S)
    active = evaluate(p, nodes, memory, NOW, fence_outcomes={"f1": FenceOutcome.ACTIVE})
    assert active.create == () and active.escalated == ()
    assert active.requeue_after == 30.0  # exactly when the escalation timeout is reached
    stuck = evaluate(p, nodes, memory, NOW + 30 * S, fence_outcomes={"f1": FenceOutcome.ACTIVE})
    assert [r.fence for r in stuck.escalated] == ["f1"]
    again = evaluate(p, nodes, stuck.memory, NOW + 31 * S, fence_outcomes={"f1": FenceOutcome.ACTIVE})
    assert again.escalated == () and again.create == ()


def test_failed_fence_is_escalated_once_and_not_retried_concurrently() -> None:
    memory = Memory(remediations={"a": Remediation("a", "f1", NOW - 30 * S)})
    nodes = [node("a", "Unknown", 60), node("b"), node("c")]
    failed = evaluate(policy(), nodes, memory, NOW, fence_outcomes={"f1": FenceOutcome.FAILED})
    assert [r.fence for r in failed.escalated] == ["f1"] and failed.create == ()
    later = evaluate(policy(), nodes, failed.memory, NOW + S, fence_outcomes={"f1": FenceOutcome.FAILED})
    assert later.escalated == () and later.create == ()


def test_remediation_ends_after_healthy_delay() -> None:
    p = policy(healthy_delay=15 * S)
    memory = Memory(remediations={"a": Remediation("a", "f1", NOW - 60 * S)})
    nodes = [node("a", "True", 2), node("b"), node("c")]
    first = evaluate(p, nodes, memory, NOW, fence_outcomes={"f1": FenceOutcome.SUCCEEDED})
    assert first.finished == () and first.requeue_after == 15.0
    done = evaluate(p, nodes, first.memory, NOW + 15 * S, fence_outcomes={"f1": FenceOutcome.SUCCEEDED})
    assert [r.fence for r in done.finished] == ["f1"]
    assert done.memory.remediations == {}


def test_lease_fast_path() -> None:
    p = policy(lease_stale_after=4 * S)
    fresh = NodeView("a", {}, {"Ready": ("True", NOW - 600 * S)}, lease_renewed_at=NOW - 2 * S)
    stale = NodeView("a", {}, {"Ready": ("True", NOW - 600 * S)}, lease_renewed_at=NOW - 5 * S)
    others = [node("b"), node("c")]
    waiting = evaluate(p, [fresh, *others], Memory(), NOW)
    assert waiting.create == () and waiting.requeue_after == 2.0
    fenced = evaluate(p, [stale, *others], Memory(), NOW)
    assert fenced.create[0].signals[0].startswith("Lease not renewed for 5.0s")


def test_selector_and_overlap_owner() -> None:
    workers = LabelSelector({"role": "worker"}, (("zone", "In", ("a", "b")),))
    assert workers.matches({"role": "worker", "zone": "a"})
    assert not workers.matches({"role": "worker", "zone": "c"})
    assert not LabelSelector({}, (("x", "DoesNotExist", ()),)).matches({"x": "1"})
    older, newer = NOW - 60 * S, NOW
    policies = [("new", newer, LabelSelector()), ("old", older, workers)]
    assert owner_of_overlaps(policies, {"role": "worker", "zone": "a"}) == "old"
    assert owner_of_overlaps(policies, {"role": "db"}) == "new"


def test_parse_policy_and_memory_round_trip() -> None:
    p = parse_policy(
        "lab",
        {
            "selector": {"matchLabels": {"remediator.io/lab-host": "true"}},
            "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "duration": "5s"}],
            "minHealthy": "51%",
            "escalationTimeout": "2m",
            "stormCooldown": "30s",
            "healthyDelay": "10s",
            "leaseStaleAfter": "3s",
        },
    )
    assert p.min_healthy == Threshold(51, True)
    assert p.unhealthy_conditions[0].duration == 5 * S
    assert p.lease_stale_after == 3 * S
    with pytest.raises(ValueError, match="not both"):
        parse_policy("x", {"minHealthy": 1, "maxUnhealthy": 1})
    with pytest.raises(ValueError, match=r"spec\.stormCooldown"):
        parse_policy("x", {"stormCooldown": "soon"})
    memory = Memory(
        storm_active=True,
        storm_ended_at=NOW,
        remediations={"a": Remediation("a", "f", NOW, FenceOutcome.FAILED, NOW, True)},
    )
    assert memory_from_status(memory_to_status(memory)) == memory
