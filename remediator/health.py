"""Health policy, pure: (nodes, policy, remediations, memory, now) -> verdict.

``evaluate`` decides, for one ``NodeHealthCheck`` policy, which selected nodes are unhealthy, whether
remediating them is allowed (the storm gate: ``minHealthy`` / ``maxUnhealthy``, the storm cooldown,
pause, one control-plane node at a time), which nodes get a new Fence, which remediations are over
(the node stayed healthy for ``healthyDelay``) or stuck (past ``escalationTimeout``), and when to
look again: the exact moment the next duration elapses, so the controller requeues instead of polling.

Nothing here talks to a cluster: the controller turns Nodes, Leases and Fences into the small views
below and carries out the verdict. Times are timezone-aware datetimes; ``now`` is always passed in.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

#: Nodes with this label set to "true" are never remediated by any policy.
EXCLUDE_LABEL = "remediator.io/exclude-from-remediation"
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> timedelta:
    """A Go/Kubernetes style duration ("300s", "5m", "1h30m", "500ms") as a timedelta."""
    match = _DURATION.match(text.strip()) if text else None
    if not match or not any(match.groups()):
        raise ValueError(f"invalid duration {text!r} (examples: 30s, 5m, 1h30m, 500ms)")
    hours, minutes, seconds, millis = match.groups()
    return timedelta(
        hours=int(hours or 0),
        minutes=int(minutes or 0),
        seconds=float(seconds or 0),
        milliseconds=int(millis or 0),
    )


@dataclass(frozen=True)
class Threshold:
    """An integer or a percentage of the observed nodes (``minHealthy`` / ``maxUnhealthy``)."""

    value: int
    percent: bool = False

    @classmethod
    def parse(cls, raw: int | str) -> Threshold:
        if isinstance(raw, bool):
            raise ValueError(f"invalid threshold {raw!r}")
        if isinstance(raw, int):
            if raw < 0:
                raise ValueError(f"threshold must not be negative: {raw}")
            return cls(raw)
        text = raw.strip()
        if text.endswith("%") and text[:-1].isdigit() and int(text[:-1]) <= 100:
            return cls(int(text[:-1]), percent=True)
        if text.isdigit():
            return cls(int(text))
        raise ValueError(f"invalid threshold {raw!r} (an integer, or a percentage like 51%)")

    def scaled(self, total: int, round_up: bool) -> int:
        if not self.percent:
            return self.value
        exact = self.value * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


@dataclass(frozen=True)
class UnhealthyCondition:
    """A node is unhealthy when condition ``type`` has had ``status`` for at least ``duration``."""

    type: str
    status: str
    duration: timedelta


DEFAULT_UNHEALTHY_CONDITIONS = (
    UnhealthyCondition("Ready", "Unknown", timedelta(seconds=300)),
    UnhealthyCondition("Ready", "False", timedelta(seconds=300)),
)


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector (matchLabels and matchExpressions)."""

    match_labels: Mapping[str, str] = field(default_factory=dict)
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for key, operator, values in self.match_expressions:
            present = key in labels
            if operator == "In" and not (present and labels[key] in values):
                return False
            if operator == "NotIn" and present and labels[key] in values:
                return False
            if operator == "Exists" and not present:
                return False
            if operator == "DoesNotExist" and present:
                return False
        return True


@dataclass(frozen=True)
class Policy:
    """A NodeHealthCheck spec, parsed."""

    name: str
    selector: LabelSelector = field(default_factory=LabelSelector)
    unhealthy_conditions: tuple[UnhealthyCondition, ...] = DEFAULT_UNHEALTHY_CONDITIONS
    min_healthy: Threshold | None = None
    max_unhealthy: Threshold | None = None
    escalation_timeout: timedelta = timedelta(minutes=10)
    pause: bool = False
    storm_cooldown: timedelta = timedelta(0)
    healthy_delay: timedelta = timedelta(0)
    #: Fast path: a node whose Lease was not renewed for this long is unhealthy at once, without
    #: waiting for kube-controller-manager to mark it Ready=Unknown.
    lease_stale_after: timedelta | None = None

    def __post_init__(self) -> None:
        if self.min_healthy is not None and self.max_unhealthy is not None:
            raise ValueError("give minHealthy or maxUnhealthy, not both")


@dataclass(frozen=True)
class NodeView:
    """What the policy needs to know about one node."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    #: condition type -> (status, lastTransitionTime)
    conditions: Mapping[str, tuple[str, datetime]] = field(default_factory=dict)
    lease_renewed_at: datetime | None = None

    @property
    def excluded(self) -> bool:
        return self.labels.get(EXCLUDE_LABEL) == "true"

    @property
    def control_plane(self) -> bool:
        return any(label in self.labels for label in CONTROL_PLANE_LABELS)


class FenceOutcome(enum.StrEnum):
    ACTIVE = "Active"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Remediation:
    """A Fence this policy created for a node, as last seen."""

    node: str
    fence: str
    created_at: datetime
    outcome: FenceOutcome = FenceOutcome.ACTIVE
    #: When the node was first seen healthy again after the Fence finished (healthyDelay clock).
    healthy_since: datetime | None = None
    escalated: bool = False


@dataclass(frozen=True)
class Memory:
    """What the policy remembers between evaluations (kept in the NodeHealthCheck's status)."""

    storm_active: bool = False
    storm_ended_at: datetime | None = None
    remediations: Mapping[str, Remediation] = field(default_factory=dict)  # node -> remediation


class NodeState(enum.StrEnum):
    HEALTHY = "Healthy"
    PENDING = "Pending"  # matches an unhealthy condition, its duration has not elapsed yet
    UNHEALTHY = "Unhealthy"
    EXCLUDED = "Excluded"
    OWNED_ELSEWHERE = "OwnedByAnotherPolicy"


@dataclass(frozen=True)
class NodeVerdict:
    node: str
    state: NodeState
    #: The signals that made the node unhealthy (or pending), e.g. "Ready=Unknown for 12.0s".
    signals: tuple[str, ...] = ()
    unhealthy_since: datetime | None = None


@dataclass(frozen=True)
class CreateFence:
    node: str
    reason: str
    signals: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    nodes: tuple[NodeVerdict, ...]
    create: tuple[CreateFence, ...]
    memory: Memory
    observed: int
    healthy: int
    unhealthy: int
    #: Why no new Fence may start now (storm, cooldown, pause), or None when they may.
    blocked: str | None
    storm_started: bool
    storm_ended: bool
    #: Remediations this evaluation found stuck past escalationTimeout (newly).
    escalated: tuple[Remediation, ...]
    #: Remediations that are over: the node stayed healthy for healthyDelay after its Fence.
    finished: tuple[Remediation, ...]
    #: Seconds until something may change without any event, or None.
    requeue_after: float | None

    def unhealthy_nodes(self) -> list[str]:
        return [v.node for v in self.nodes if v.state is NodeState.UNHEALTHY]


def _node_verdict(node: NodeView, policy: Policy, now: datetime) -> tuple[NodeVerdict, datetime | None]:
    """The node's state under the policy, and when its state changes next without an event."""
    signals: list[str] = []
    pending: list[str] = []
    since: datetime | None = None
    next_change: datetime | None = None
    for rule in policy.unhealthy_conditions:
        current = node.conditions.get(rule.type)
        if current is None or current[0] != rule.status:
            continue
        _, changed_at = current
        held = now - changed_at
        text = f"{rule.type}={rule.status} for {held.total_seconds():.1f}s"
        if held >= rule.duration:
            signals.append(f"{text} (>= {rule.duration.total_seconds():g}s)")
            since = min(since, changed_at + rule.duration) if since else changed_at + rule.duration
        else:
            pending.append(f"{text} (< {rule.duration.total_seconds():g}s)")
            due = changed_at + rule.duration
            next_change = min(next_change, due) if next_change else due
    if policy.lease_stale_after is not None and node.lease_renewed_at is not None:
        stale_for = now - node.lease_renewed_at
        if stale_for >= policy.lease_stale_after:
            signals.append(
                f"Lease not renewed for {stale_for.total_seconds():.1f}s "
                f"(>= {policy.lease_stale_after.total_seconds():g}s)"
            )
            due_at = node.lease_renewed_at + policy.lease_stale_after
            since = min(since, due_at) if since else due_at
        else:
            due = node.lease_renewed_at + policy.lease_stale_after
            next_change = min(next_change, due) if next_change else due
    if signals:
        return NodeVerdict(node.name, NodeState.UNHEALTHY, tuple(signals), since), None
    if pending:
        return NodeVerdict(node.name, NodeState.PENDING, tuple(pending)), next_change
    return NodeVerdict(node.name, NodeState.HEALTHY), next_change


def _earliest(times: Iterable[datetime | None]) -> datetime | None:
    present = [t for t in times if t is not None]
    return min(present) if present else None


def evaluate(  # noqa: PLR0912, PLR0915 - one pass over the rules reads best as one function
    policy: Policy,
    nodes: Sequence[NodeView],
    memory: Memory,
    now: datetime,
    *,
    owned_elsewhere: frozenset[str] = frozenset(),
    fence_outcomes: Mapping[str, FenceOutcome] | None = None,
) -> Verdict:
    """Decide what the policy does now.

    ``nodes`` are the nodes the policy's selector picked. ``owned_elsewhere`` are nodes an older
    overlapping policy remediates (reported, never raced). ``fence_outcomes`` maps Fence names to
    their current outcome; a remediation whose Fence is missing from it is taken as finished.
    """
    outcomes = fence_outcomes or {}
    verdicts: list[NodeVerdict] = []
    wake: list[datetime | None] = []
    for node in nodes:
        if node.excluded:
            verdicts.append(NodeVerdict(node.name, NodeState.EXCLUDED))
            continue
        if node.name in owned_elsewhere:
            verdicts.append(NodeVerdict(node.name, NodeState.OWNED_ELSEWHERE))
            continue
        verdict, next_change = _node_verdict(node, policy, now)
        verdicts.append(verdict)
        wake.append(next_change)
    by_node = {v.node: v for v in verdicts}
    considered = [v for v in verdicts if v.state not in (NodeState.EXCLUDED, NodeState.OWNED_ELSEWHERE)]
    observed = len(considered)
    unhealthy = sum(1 for v in considered if v.state is NodeState.UNHEALTHY)
    pending = sum(1 for v in considered if v.state is NodeState.PENDING)
    healthy = observed - unhealthy
    # The storm gate also counts nodes whose unhealthy condition has not lasted its duration yet:
    # nodes that fail together do not cross their durations in the same instant, and the first of
    # them must not be fenced just because the others are a second behind.
    failing = unhealthy + pending

    # Follow up on remediations already made.
    remediations: dict[str, Remediation] = {}
    escalated: list[Remediation] = []
    finished: list[Remediation] = []
    for node_name, previous in memory.remediations.items():
        outcome = outcomes.get(previous.fence)
        if outcome is None:
            # The Fence is gone (deleted by someone): its remediation is over either way.
            keep = previous.outcome is not FenceOutcome.ACTIVE
            outcome = previous.outcome if keep else FenceOutcome.SUCCEEDED
        rem = replace(previous, outcome=outcome)
        if outcome is FenceOutcome.ACTIVE:
            deadline = rem.created_at + policy.escalation_timeout
            if not rem.escalated and now >= deadline:
                rem = replace(rem, escalated=True)
                escalated.append(rem)
            elif not rem.escalated:
                wake.append(deadline)
            remediations[node_name] = rem
            continue
        node_verdict = by_node.get(node_name)
        if node_verdict is not None and node_verdict.state is NodeState.UNHEALTHY:
            # Finished but the node is still (or again) unhealthy: keep it, without a second
            # Fence; a failed Fence counts as escalated.
            if outcome is FenceOutcome.FAILED and not rem.escalated:
                rem = replace(rem, escalated=True)
                escalated.append(rem)
            remediations[node_name] = replace(rem, healthy_since=None)
            continue
        healthy_since = rem.healthy_since or now
        if now - healthy_since >= policy.healthy_delay or node_verdict is None:
            finished.append(rem)
            continue
        wake.append(healthy_since + policy.healthy_delay)
        remediations[node_name] = replace(rem, healthy_since=healthy_since)

    # The storm gate.
    storm = False
    if policy.min_healthy is not None:
        storm = observed - failing < policy.min_healthy.scaled(observed, round_up=True)
    elif policy.max_unhealthy is not None:
        storm = failing > policy.max_unhealthy.scaled(observed, round_up=False)
    storm_started = storm and not memory.storm_active
    storm_ended = memory.storm_active and not storm
    storm_ended_at = now if storm_ended else memory.storm_ended_at
    blocked: str | None = None
    if storm:
        limit = (
            f"minHealthy {policy.min_healthy}"
            if policy.min_healthy is not None
            else f"maxUnhealthy {policy.max_unhealthy}"
        )
        blocked = (
            f"StormActive: {unhealthy} of {observed} nodes unhealthy"
            + (f" and {pending} about to be" if pending else "")
            + f", {observed - failing} healthy ({limit})"
        )
    elif storm_ended_at is not None and now - storm_ended_at < policy.storm_cooldown:
        cooldown_end = storm_ended_at + policy.storm_cooldown
        blocked = f"StormCooldown: remediation resumes at {cooldown_end.isoformat()}"
        wake.append(cooldown_end)
    elif policy.pause:
        blocked = "Paused: spec.pause is true"

    creates: list[CreateFence] = []
    if blocked is None:
        control_plane_busy = any(
            by_node.get(n) is not None and _is_control_plane(nodes, n) and r.outcome is FenceOutcome.ACTIVE
            for n, r in remediations.items()
        )
        for verdict in verdicts:
            if verdict.state is not NodeState.UNHEALTHY or verdict.node in remediations:
                continue
            if _is_control_plane(nodes, verdict.node):
                if control_plane_busy:
                    continue
                control_plane_busy = True
            creates.append(
                CreateFence(
                    verdict.node,
                    f"NodeHealthCheck {policy.name}: " + "; ".join(verdict.signals),
                    verdict.signals,
                )
            )

    new_memory = Memory(storm_active=storm, storm_ended_at=storm_ended_at, remediations=remediations)
    next_wake = _earliest(wake)
    requeue = max((next_wake - now).total_seconds(), 0.0) if next_wake is not None else None
    return Verdict(
        nodes=tuple(verdicts),
        create=tuple(creates),
        memory=new_memory,
        observed=observed,
        healthy=healthy,
        unhealthy=unhealthy,
        blocked=blocked,
        storm_started=storm_started,
        storm_ended=storm_ended,
        escalated=tuple(escalated),
        finished=tuple(finished),
        requeue_after=requeue,
    )


def _is_control_plane(nodes: Sequence[NodeView], name: str) -> bool:
    return any(n.name == name and n.control_plane for n in nodes)


def owner_of_overlaps(
    policies: Sequence[tuple[str, datetime, LabelSelector]], labels: Mapping[str, str]
) -> str | None:
    """Of the policies selecting a node, the one that owns it: the oldest (then by name)."""
    selecting = [(created, name) for name, created, selector in policies if selector.matches(labels)]
    return min(selecting)[1] if selecting else None


# --- the NodeHealthCheck resource <-> the types above ------------------------------------------


def _parse_selector(raw: Mapping[str, object] | None) -> LabelSelector:
    if not raw:
        return LabelSelector()
    labels = raw.get("matchLabels") or {}
    expressions = raw.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(expressions, list):
        raise ValueError("selector must have matchLabels (a map) and matchExpressions (a list)")
    parsed = []
    for expr in expressions:
        if not isinstance(expr, Mapping):
            raise ValueError("selector.matchExpressions items must be objects")
        operator = str(expr.get("operator"))
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {operator!r}")
        values = expr.get("values") or []
        parsed.append((str(expr.get("key")), operator, tuple(str(v) for v in values)))
    return LabelSelector({str(k): str(v) for k, v in labels.items()}, tuple(parsed))


def parse_policy(name: str, spec: Mapping[str, object]) -> Policy:
    """A Policy from a NodeHealthCheck spec. Raises ValueError with the field at fault."""

    def duration(key: str, default: timedelta) -> timedelta:
        raw = spec.get(key)
        if raw is None:
            return default
        try:
            return parse_duration(str(raw))
        except ValueError as exc:
            raise ValueError(f"spec.{key}: {exc}") from exc

    conditions_raw = spec.get("unhealthyConditions")
    conditions: tuple[UnhealthyCondition, ...] = DEFAULT_UNHEALTHY_CONDITIONS
    if conditions_raw:
        if not isinstance(conditions_raw, list):
            raise ValueError("spec.unhealthyConditions must be a list")
        conditions = tuple(
            UnhealthyCondition(str(c["type"]), str(c["status"]), parse_duration(str(c["duration"])))
            for c in conditions_raw
        )
    min_healthy = spec.get("minHealthy")
    max_unhealthy = spec.get("maxUnhealthy")
    if min_healthy is not None and max_unhealthy is not None:
        raise ValueError("spec: give minHealthy or maxUnhealthy, not both")
    lease = spec.get("leaseStaleAfter")
    selector = spec.get("selector")
    return Policy(
        name=name,
        selector=_parse_selector(selector if isinstance(selector, Mapping) else None),
        unhealthy_conditions=conditions,
        min_healthy=Threshold.parse(min_healthy) if isinstance(min_healthy, int | str) else None,
        max_unhealthy=Threshold.parse(max_unhealthy) if isinstance(max_unhealthy, int | str) else None,
        escalation_timeout=duration("escalationTimeout", timedelta(minutes=10)),
        pause=bool(spec.get("pause", False)),
        storm_cooldown=duration("stormCooldown", timedelta(0)),
        healthy_delay=duration("healthyDelay", timedelta(0)),
        lease_stale_after=parse_duration(str(lease)) if lease else None,
    )


def _time(value: object) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _fmt(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def memory_from_status(status: Mapping[str, object] | None) -> Memory:
    if not status:
        return Memory()
    remediations: dict[str, Remediation] = {}
    raw = status.get("remediations") or []
    for item in raw if isinstance(raw, list) else []:
        created = _time(item.get("createdAt"))
        if created is None:
            continue
        remediations[str(item["node"])] = Remediation(
            node=str(item["node"]),
            fence=str(item["fence"]),
            created_at=created,
            outcome=FenceOutcome(item.get("outcome", "Active")),
            healthy_since=_time(item.get("healthySince")),
            escalated=bool(item.get("escalated", False)),
        )
    return Memory(
        storm_active=bool(status.get("stormActive", False)),
        storm_ended_at=_time(status.get("stormEndedAt")),
        remediations=remediations,
    )


def memory_to_status(memory: Memory) -> dict[str, object]:
    return {
        "stormActive": memory.storm_active,
        "stormEndedAt": _fmt(memory.storm_ended_at),
        "remediations": [
            {
                "node": r.node,
                "fence": r.fence,
                "createdAt": _fmt(r.created_at),
                "outcome": r.outcome.value,
                "healthySince": _fmt(r.healthy_since),
                "escalated": r.escalated,
            }
            for r in sorted(memory.remediations.values(), key=lambda r: r.node)
        ],
    }
