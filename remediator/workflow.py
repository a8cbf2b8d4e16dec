"""The Fence state machine, pure: (spec, state, observation) -> the next step.

Nothing here talks to a cluster or a BMC. :func:`next_step` looks at what the controller knows (the
Fence's :class:`FenceState`, rebuilt from ``status``, and a fresh :class:`Observation` of the world)
and says what to do next: a :class:`Transition` to another phase, a :class:`Command` for the I/O side
(:mod:`remediator.fence_controller`) to carry out, a :class:`Wait`, or :data:`DONE`. The ``record_*``
functions fold the outcome of a command back into the state. The state round-trips through the
Fence's ``status`` (:meth:`FenceState.to_status` / :meth:`FenceState.from_status`), which is what makes
a fence resumable: a controller that restarts at any point rebuilds the state from ``status`` and asks
:func:`next_step` again.

Phases::

    Pending -> Isolating -> PoweringOff -> Verified -> Releasing -> Recovering -> Succeeded
                                                               \\-> Removing   -/
                                                               \\-> Succeeded (afterFence Keep)
    any phase -> Failed (with a reason); a dry run goes Pending -> Succeeded/Failed after a probe.

Safety rules encoded here: nothing is released before a power-off was read back (``Releasing`` is only
reached from ``Verified``); an identity mismatch or every level failing ends ``Failed`` with the node
still isolated; a power-off that was verified is never sent again; after a restart an in-flight
power-off whose command was already sent is re-verified by reading the state, not re-sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

#: Taint key the controller puts on a node it fences (NoSchedule: nothing is evicted before Verified).
FENCING_TAINT_KEY = "remediator.io/fencing"
#: The upstream taint that lets the cluster release a shut-down node's volumes and pods.
OUT_OF_SERVICE_TAINT_KEY = "node.kubernetes.io/out-of-service"
OUT_OF_SERVICE_TAINT_VALUE = "nodeshutdown"
#: How often a resumed in-flight power attempt may be resumed before it counts as failed.
MAX_RESUMES = 3
#: Poll interval while waiting for a node to rejoin.
NODE_POLL_INTERVAL_S = 0.25
DEFAULT_RECOVERY_TIMEOUT_S = 600.0


class Phase(enum.StrEnum):
    PENDING = "Pending"
    ISOLATING = "Isolating"
    POWERING_OFF = "PoweringOff"
    VERIFIED = "Verified"
    RELEASING = "Releasing"
    RECOVERING = "Recovering"
    REMOVING = "Removing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Action(enum.StrEnum):
    OFF = "Off"
    REBOOT = "Reboot"


class AfterFence(enum.StrEnum):
    REMOVE = "Remove"
    POWER_ON = "PowerOn"
    KEEP = "Keep"


class Op(enum.StrEnum):
    """What a :class:`Command` asks the I/O side to do."""

    PROBE = "Probe"  # dry run: check every level (credentials, reachability, identity), change nothing
    ISOLATE = "Isolate"  # cordon + our NoSchedule taint
    POWER_OFF = "PowerOff"  # identity check, then a verified power-off through one level
    RELEASE = "Release"  # out-of-service taint, force-delete pods, delete VolumeAttachments
    POWER_ON = "PowerOn"  # verified power-on through one level
    RESTORE = "Restore"  # remove out-of-service and our taints, uncordon if we cordoned
    DELETE_NODE = "DeleteNode"


# Failure reasons (status.reason, condition reasons, event reasons).
R_SELF_FENCE = "SelfFence"
R_ALREADY_FENCING = "AlreadyFencing"
R_NODE_NOT_FOUND = "NodeNotFound"
R_NODE_IDENTITY_UNKNOWN = "NodeIdentityUnknown"
R_IDENTITY_MISMATCH = "IdentityMismatch"
R_ALL_LEVELS_FAILED = "AllLevelsFailed"
R_POWER_ON_FAILED = "PowerOnFailed"
R_NODE_NOT_READY = "NodeNotReady"
R_DRY_RUN_FAILED = "DryRunCheckFailed"


# --- inputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FenceSpec:
    node_name: str
    action: Action = Action.OFF
    after: AfterFence = AfterFence.KEEP
    reason: str = ""
    dry_run: bool = False
    recovery_timeout_s: float = DEFAULT_RECOVERY_TIMEOUT_S

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> FenceSpec:
        """The spec of a Fence object (defaults as in the CRD). Raises ValueError on nonsense."""
        node = spec.get("nodeName")
        if not isinstance(node, str) or not node:
            raise ValueError("spec.nodeName is required")
        return cls(
            node_name=node,
            action=Action(spec.get("action", Action.OFF.value)),
            after=AfterFence(spec.get("afterFence", AfterFence.KEEP.value)),
            reason=str(spec.get("reason", "")),
            dry_run=bool(spec.get("dryRun", False)),
            recovery_timeout_s=float(spec.get("recoveryTimeoutSeconds", DEFAULT_RECOVERY_TIMEOUT_S)),
        )

    @property
    def powers_on(self) -> bool:
        """Whether the host is powered back on after the release."""
        return self.after is AfterFence.POWER_ON or self.action is Action.REBOOT


@dataclass(frozen=True)
class LevelInfo:
    """What the state machine needs to know about one fence level."""

    index: int
    type: str
    description: str
    attempts: int


@dataclass(frozen=True)
class NodeFacts:
    system_uuid: str | None = None
    boot_id: str | None = None
    ready: str | None = None
    ready_heartbeat: datetime | None = None
    unschedulable: bool = False
    #: When the node's kubelet last renewed its Lease in kube-node-lease (None: unknown).
    lease_renewed: datetime | None = None


@dataclass(frozen=True)
class Observation:
    """What the I/O side saw just now. ``node`` is None when the Node does not exist."""

    now: datetime
    node: NodeFacts | None = None
    levels: tuple[LevelInfo, ...] = ()
    #: (reason, message) when the NodeFencing (or every level's configuration) is unusable.
    config_error: tuple[str, str] | None = None
    #: Names of other active Fences of the same node that take precedence over this one.
    competing: tuple[str, ...] = ()
    #: The node this controller runs on (NODE_NAME), if known.
    own_node: str | None = None
    #: The controller runs with --dry-run: every Fence is a dry run.
    controller_dry_run: bool = False


# --- state ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str
    last_transition: datetime
    observed_generation: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": fmt_time(self.last_transition),
            "observedGeneration": self.observed_generation,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Condition:
        return cls(
            type=str(raw["type"]),
            status=str(raw["status"]),
            reason=str(raw.get("reason", "")),
            message=str(raw.get("message", "")),
            last_transition=parse_time(raw.get("lastTransitionTime")) or EPOCH,
            observed_generation=int(raw.get("observedGeneration", 0)),
        )


@dataclass(frozen=True)
class PhaseRecord:
    phase: Phase
    started: datetime
    finished: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase.value, "startedAt": fmt_time(self.started)}
        if self.finished is not None:
            out["finishedAt"] = fmt_time(self.finished)
            out["durationSeconds"] = round((self.finished - self.started).total_seconds(), 3)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PhaseRecord:
        return cls(
            Phase(raw["phase"]), parse_time(raw["startedAt"]) or EPOCH, parse_time(raw.get("finishedAt"))
        )


@dataclass(frozen=True)
class Attempt:
    """One try of one fence level for one power operation."""

    operation: Op
    level: int
    level_type: str
    driver: str
    attempt: int
    started: datetime
    duration_s: float
    succeeded: bool
    command_sent: bool = False
    error_class: str | None = None
    message: str = ""
    retryable: bool = True
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operation": self.operation.value,
            "level": self.level,
            "levelType": self.level_type,
            "driver": self.driver,
            "attempt": self.attempt,
            "startedAt": fmt_time(self.started),
            "durationSeconds": round(self.duration_s, 3),
            "result": "Succeeded" if self.succeeded else "Failed",
            "commandSent": self.command_sent,
            "retryable": self.retryable,
            "resumed": self.resumed,
            "message": self.message,
        }
        if self.error_class:
            out["errorClass"] = self.error_class
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Attempt:
        return cls(
            operation=Op(raw["operation"]),
            level=int(raw["level"]),
            level_type=str(raw.get("levelType", "")),
            driver=str(raw.get("driver", "")),
            attempt=int(raw["attempt"]),
            started=parse_time(raw.get("startedAt")) or EPOCH,
            duration_s=float(raw.get("durationSeconds", 0.0)),
            succeeded=raw.get("result") == "Succeeded",
            command_sent=bool(raw.get("commandSent", False)),
            error_class=raw.get("errorClass"),
            message=str(raw.get("message", "")),
            retryable=bool(raw.get("retryable", True)),
            resumed=bool(raw.get("resumed", False)),
        )


@dataclass(frozen=True)
class InFlight:
    """A power operation that was started; written to status before anything is sent to the BMC."""

    operation: Op
    level: int
    attempt: int
    started: datetime
    command_sent: datetime | None = None
    resumes: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operation": self.operation.value,
            "level": self.level,
            "attempt": self.attempt,
            "startedAt": fmt_time(self.started),
            "resumes": self.resumes,
        }
        if self.command_sent is not None:
            out["commandSentAt"] = fmt_time(self.command_sent)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> InFlight:
        return cls(
            operation=Op(raw["operation"]),
            level=int(raw["level"]),
            attempt=int(raw["attempt"]),
            started=parse_time(raw.get("startedAt")) or EPOCH,
            command_sent=parse_time(raw.get("commandSentAt")),
            resumes=int(raw.get("resumes", 0)),
        )


@dataclass(frozen=True)
class FenceState:
    """Everything the controller knows about one Fence; lives in the Fence's ``status``."""

    phase: Phase = Phase.PENDING
    reason: str = ""
    message: str = ""
    dry_run: bool = False
    started: datetime | None = None
    completed: datetime | None = None
    observed_generation: int = 0
    #: The node's identity when the fence was accepted: the BMC must report this system UUID.
    target_uuid: str | None = None
    target_boot_id: str | None = None
    isolated: datetime | None = None
    #: Whether the node was already cordoned before we cordoned it (then we leave it cordoned).
    was_unschedulable: bool = False
    in_flight: InFlight | None = None
    off_verified: datetime | None = None
    off_level: int | None = None
    on_verified: datetime | None = None
    released: datetime | None = None
    pods_deleted: int = 0
    volume_attachments_deleted: int = 0
    node_deleted: datetime | None = None
    restored: datetime | None = None
    plan: tuple[str, ...] = ()
    phases: tuple[PhaseRecord, ...] = ()
    attempts: tuple[Attempt, ...] = ()
    conditions: tuple[Condition, ...] = ()
    bmc_seconds: float = 0.0
    wait_seconds: float = 0.0
    resumes: int = 0

    # -- status round trip --

    def to_status(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "targetSystemUUID": self.target_uuid,
            "targetBootID": self.target_boot_id,
            "isolatedAt": fmt_opt(self.isolated),
            "wasUnschedulable": self.was_unschedulable,
            "powerOffVerifiedAt": fmt_opt(self.off_verified),
            "powerOffLevel": self.off_level,
            "powerOnVerifiedAt": fmt_opt(self.on_verified),
            "releasedAt": fmt_opt(self.released),
            "podsDeleted": self.pods_deleted,
            "volumeAttachmentsDeleted": self.volume_attachments_deleted,
            "nodeDeletedAt": fmt_opt(self.node_deleted),
            "restoredAt": fmt_opt(self.restored),
        }
        return {
            "phase": self.phase.value,
            "reason": self.reason,
            "message": self.message,
            "dryRun": self.dry_run,
            "startedAt": fmt_opt(self.started),
            "completedAt": fmt_opt(self.completed),
            "observedGeneration": self.observed_generation,
            "facts": facts,
            # None (JSON null) deletes the field with a merge patch.
            "inFlight": self.in_flight.to_dict() if self.in_flight else None,
            "plan": list(self.plan),
            "phases": [p.to_dict() for p in self.phases],
            "attempts": [a.to_dict() for a in self.attempts],
            "conditions": [c.to_dict() for c in self.conditions],
            "timing": {
                "bmcSeconds": round(self.bmc_seconds, 3),
                "waitSeconds": round(self.wait_seconds, 3),
                "resumes": self.resumes,
            },
        }

    @classmethod
    def from_status(cls, status: dict[str, Any] | None) -> FenceState:
        status = status or {}
        if not status.get("phase"):
            return cls()
        facts = status.get("facts") or {}
        timing = status.get("timing") or {}
        in_flight = status.get("inFlight")
        off_level = facts.get("powerOffLevel")
        return cls(
            phase=Phase(status["phase"]),
            reason=str(status.get("reason", "")),
            message=str(status.get("message", "")),
            dry_run=bool(status.get("dryRun", False)),
            started=parse_time(status.get("startedAt")),
            completed=parse_time(status.get("completedAt")),
            observed_generation=int(status.get("observedGeneration", 0)),
            target_uuid=facts.get("targetSystemUUID"),
            target_boot_id=facts.get("targetBootID"),
            isolated=parse_time(facts.get("isolatedAt")),
            was_unschedulable=bool(facts.get("wasUnschedulable", False)),
            in_flight=InFlight.from_dict(in_flight) if in_flight else None,
            off_verified=parse_time(facts.get("powerOffVerifiedAt")),
            off_level=int(off_level) if off_level is not None else None,
            on_verified=parse_time(facts.get("powerOnVerifiedAt")),
            released=parse_time(facts.get("releasedAt")),
            pods_deleted=int(facts.get("podsDeleted", 0)),
            volume_attachments_deleted=int(facts.get("volumeAttachmentsDeleted", 0)),
            node_deleted=parse_time(facts.get("nodeDeletedAt")),
            restored=parse_time(facts.get("restoredAt")),
            plan=tuple(str(x) for x in status.get("plan") or ()),
            phases=tuple(PhaseRecord.from_dict(p) for p in status.get("phases") or ()),
            attempts=tuple(Attempt.from_dict(a) for a in status.get("attempts") or ()),
            conditions=tuple(Condition.from_dict(c) for c in status.get("conditions") or ()),
            bmc_seconds=float(timing.get("bmcSeconds", 0.0)),
            wait_seconds=float(timing.get("waitSeconds", 0.0)),
            resumes=int(timing.get("resumes", 0)),
        )

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


# --- steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """Move to ``phase``; ``reason``/``message`` describe why (they go to status and an Event)."""

    phase: Phase
    reason: str
    message: str
    target_uuid: str | None = None
    target_boot_id: str | None = None


@dataclass(frozen=True)
class Command:
    """Ask the I/O side to do something. ``reverify``: the command was sent before a restart;
    read the state back instead of sending it again."""

    op: Op
    level: int | None = None
    attempt: int = 0
    reverify: bool = False
    resumed: bool = False


@dataclass(frozen=True)
class Wait:
    seconds: float
    what: str


@dataclass(frozen=True)
class Done:
    pass


DONE = Done()
Step = Transition | Command | Wait | Done


# --- outcomes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerOutcome:
    """The result of a POWER_OFF / POWER_ON command."""

    operation: Op
    level: LevelInfo
    driver: str
    attempt: int
    started: datetime
    duration_s: float
    succeeded: bool
    command_sent: bool
    error_class: str | None = None
    message: str = ""
    retryable: bool = True
    resumed: bool = False


@dataclass(frozen=True)
class ProbeOutcome:
    """What a dry run found: one line per level (None error = usable) and what would be released."""

    levels: tuple[tuple[LevelInfo, str | None, str], ...]  # (level, error class or None, detail)
    pods: int = 0
    volume_attachments: int = 0


# --- helpers -------------------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def fmt_time(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds (what the CRD's date-time format accepts)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_opt(value: datetime | None) -> str | None:
    return fmt_time(value) if value is not None else None


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = str(value).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def set_condition(
    conditions: tuple[Condition, ...],
    type_: str,
    status: str,
    reason: str,
    message: str,
    now: datetime,
    generation: int = 0,
) -> tuple[Condition, ...]:
    """Conditions with ``type_`` set; lastTransitionTime changes only when the status changes."""
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition if old is not None and old.status == status else now
    new = Condition(type_, status, reason, message, since, generation)
    if old is None:
        return (*conditions, new)
    return tuple(new if c.type == type_ else c for c in conditions)


def _conditions(state: FenceState, now: datetime, *updates: tuple[str, str, str, str]) -> FenceState:
    conditions = state.conditions
    for type_, status, reason, message in updates:
        conditions = set_condition(conditions, type_, status, reason, message, now, state.observed_generation)
    return replace(state, conditions=conditions)


# --- starting and resuming -----------------------------------------------------------------------


def begin(
    state: FenceState, spec: FenceSpec, now: datetime, generation: int, controller_dry_run: bool
) -> FenceState:
    """A new Fence's first state (idempotent: a started Fence is returned unchanged)."""
    if state.started is not None:
        return state
    state = replace(
        state,
        phase=Phase.PENDING,
        reason="Accepted",
        message=f"fencing node {spec.node_name}: {spec.action.value}, then {spec.after.value}",
        dry_run=spec.dry_run or controller_dry_run,
        started=now,
        observed_generation=generation,
        phases=(PhaseRecord(Phase.PENDING, now),),
    )
    return _conditions(
        state,
        now,
        ("Processing", "True", "Pending", "checking the node, its NodeFencing and other Fences"),
        ("FenceVerified", "False", "NotYetVerified", "the host has not been read back as off yet"),
        ("Succeeded", "Unknown", "InProgress", "the fence is in progress"),
    )


def resume(state: FenceState) -> FenceState:
    """The state a restarted controller continues from: counts the resume of an in-flight attempt."""
    if state.phase.terminal or state.started is None:
        return state
    in_flight = state.in_flight
    if in_flight is not None:
        in_flight = replace(in_flight, resumes=in_flight.resumes + 1)
    return replace(state, in_flight=in_flight, resumes=state.resumes + 1)


# --- the decision --------------------------------------------------------------------------------


def next_step(spec: FenceSpec, state: FenceState, obs: Observation) -> Step:  # noqa: PLR0911
    """What to do next. Pure: the same inputs always give the same step."""
    phase = state.phase
    if phase.terminal:
        return DONE
    if phase is Phase.PENDING:
        return _pending(spec, state, obs)
    if phase is Phase.ISOLATING:
        if state.isolated is None:
            return Command(Op.ISOLATE)
        return Transition(Phase.POWERING_OFF, "Isolated", f"node {spec.node_name} cordoned and tainted")
    if phase is Phase.POWERING_OFF:
        return _powering_off(spec, state, obs)
    if phase is Phase.VERIFIED:
        return Transition(Phase.RELEASING, "Releasing", "releasing what the node held")
    if phase is Phase.RELEASING:
        if state.released is None:
            return Command(Op.RELEASE)
        return _after_release(spec, state)
    if phase is Phase.RECOVERING:
        return _recovering(spec, state, obs)
    if phase is Phase.REMOVING:
        return _removing(spec, state, obs)
    raise AssertionError(f"unhandled phase {phase}")  # pragma: no cover


def _fail(reason: str, message: str) -> Transition:
    return Transition(Phase.FAILED, reason, message)


def _pending(spec: FenceSpec, state: FenceState, obs: Observation) -> Step:  # noqa: PLR0911
    node = spec.node_name
    if obs.own_node and obs.own_node == node:
        return _fail(R_SELF_FENCE, f"refusing to fence node {node}: the controller runs on it")
    if obs.competing:
        others = ", ".join(obs.competing)
        return _fail(
            R_ALREADY_FENCING, f"node {node} is already being fenced by Fence {others}; refusing a second one"
        )
    if obs.node is None:
        return _fail(R_NODE_NOT_FOUND, f"node {node} does not exist")
    if obs.config_error is not None:
        return _fail(*obs.config_error)
    if not obs.levels:
        return _fail("NoFenceLevels", f"the NodeFencing of node {node} lists no fence levels")
    if not obs.node.system_uuid:
        return _fail(
            R_NODE_IDENTITY_UNKNOWN,
            f"node {node} reports no status.nodeInfo.systemUUID: its BMC's identity cannot be checked",
        )
    if state.dry_run:
        if state.plan:
            return _dry_run_result(state)
        return Command(Op.PROBE)
    return Transition(
        Phase.ISOLATING,
        "Isolating",
        f"cordoning node {node} and tainting it {FENCING_TAINT_KEY}",
        target_uuid=obs.node.system_uuid,
        target_boot_id=obs.node.boot_id,
    )


def _dry_run_result(state: FenceState) -> Transition:
    if state.reason in (R_DRY_RUN_FAILED, R_IDENTITY_MISMATCH):
        return _fail(state.reason, state.message)
    return Transition(Phase.SUCCEEDED, "DryRunCompleted", "dry run: every check passed; nothing was changed")


def _level_tries(state: FenceState, op: Op, level: int) -> tuple[int, bool]:
    """(attempts made, whether a non-retryable error ended the level) for ``op`` on ``level``."""
    mine = [a for a in state.attempts if a.operation is op and a.level == level]
    return len(mine), any(not a.succeeded and not a.retryable for a in mine)


def _next_attempt(
    state: FenceState, op: Op, levels: tuple[LevelInfo, ...], start: int = 0
) -> tuple[int, int] | None:
    """(level index, attempt number) of the next try, levels in order from ``start``; None if none left."""
    ordered = [lv for lv in levels if lv.index >= start] + [lv for lv in levels if lv.index < start]
    for level in ordered:
        tries, dead = _level_tries(state, op, level.index)
        if not dead and tries < level.attempts:
            return level.index, tries + 1
    return None


def _summary_of_failures(state: FenceState, op: Op) -> str:
    lines = [
        f"level {a.level + 1} {a.level_type} attempt {a.attempt}: {a.error_class}: {a.message}"
        for a in state.attempts
        if a.operation is op and not a.succeeded
    ]
    return "; ".join(lines[-4:])


def _in_flight_step(state: FenceState, op: Op) -> Command | None:
    flight = state.in_flight
    if flight is None or flight.operation is not op:
        return None
    if flight.resumes > MAX_RESUMES:
        return None  # the controller died too often here: record_abandoned() counts it as failed
    return Command(
        op, flight.level, flight.attempt, reverify=flight.command_sent is not None, resumed=flight.resumes > 0
    )


def _powering_off(spec: FenceSpec, state: FenceState, obs: Observation) -> Step:
    if state.off_verified is not None:
        return Transition(Phase.VERIFIED, "PowerOffVerified", _verified_message(state))
    mismatch = next(
        (a for a in state.attempts if a.operation is Op.POWER_OFF and a.error_class == R_IDENTITY_MISMATCH),
        None,
    )
    if mismatch is not None:
        return _fail(
            R_IDENTITY_MISMATCH, f"{mismatch.message}; node {spec.node_name} left isolated, not released"
        )
    resumed = _in_flight_step(state, Op.POWER_OFF)
    if resumed is not None:
        return resumed
    nxt = _next_attempt(state, Op.POWER_OFF, obs.levels)
    if nxt is None:
        return _fail(
            R_ALL_LEVELS_FAILED,
            f"every fence level failed; node {spec.node_name} left isolated, not released "
            f"({_summary_of_failures(state, Op.POWER_OFF)})",
        )
    return Command(Op.POWER_OFF, nxt[0], nxt[1])


def _verified_message(state: FenceState) -> str:
    ok = next((a for a in reversed(state.attempts) if a.operation is Op.POWER_OFF and a.succeeded), None)
    if ok is None:
        return "power off read back"
    how = "command sent, then" if ok.command_sent else "no command needed:"
    return f"{ok.driver}: {how} Off read back after {ok.duration_s:.2f}s"


def _after_release(spec: FenceSpec, state: FenceState) -> Transition:
    if spec.after is AfterFence.REMOVE:
        return Transition(Phase.REMOVING, "Removing", f"deleting the Node object {spec.node_name}")
    if spec.powers_on:
        return Transition(
            Phase.RECOVERING, "Recovering", f"powering {spec.node_name} on and waiting for it to rejoin"
        )
    return Transition(
        Phase.SUCCEEDED,
        "HostKeptOff",
        f"host of node {spec.node_name} is off and its workloads released; node left cordoned and tainted",
    )


def _power_on_step(spec: FenceSpec, state: FenceState, obs: Observation) -> Step | None:
    """The next power-on command, a failure, or None once the power-on was verified."""
    if state.on_verified is not None:
        return None
    resumed = _in_flight_step(state, Op.POWER_ON)
    if resumed is not None:
        return resumed
    nxt = _next_attempt(state, Op.POWER_ON, obs.levels, start=state.off_level or 0)
    if nxt is None:
        return _fail(
            R_POWER_ON_FAILED,
            f"the host of node {spec.node_name} was fenced and released but could not be powered on "
            f"({_summary_of_failures(state, Op.POWER_ON)})",
        )
    return Command(Op.POWER_ON, nxt[0], nxt[1])


def node_rejoined(node: NodeFacts | None, state: FenceState) -> bool:
    """The node is Ready, and its kubelet showed a sign of life from after the host was verified off:
    a new boot ID, a Ready heartbeat or a node-Lease renewal later than the verified power-off (a host
    proven off cannot have sent them, so they come from the new boot)."""
    if node is None or node.ready != "True":
        return False
    if node.boot_id and state.target_boot_id and node.boot_id != state.target_boot_id:
        return True
    off = state.off_verified
    if off is None:
        return False
    return any(t is not None and t > off for t in (node.ready_heartbeat, node.lease_renewed))


def _recovering(spec: FenceSpec, state: FenceState, obs: Observation) -> Step:
    power = _power_on_step(spec, state, obs)
    if power is not None:
        return power
    if state.restored is not None:
        return Transition(Phase.SUCCEEDED, "NodeRecovered", f"node {spec.node_name} rejoined and is Ready")
    if node_rejoined(obs.node, state):
        return Command(Op.RESTORE)
    assert state.on_verified is not None
    waited = (obs.now - state.on_verified).total_seconds()
    if waited >= spec.recovery_timeout_s:
        return _fail(
            R_NODE_NOT_READY,
            f"host powered on but node {spec.node_name} did not become Ready within "
            f"{spec.recovery_timeout_s:g}s; node left cordoned with the out-of-service taint",
        )
    return Wait(min(NODE_POLL_INTERVAL_S, spec.recovery_timeout_s - waited), f"node {spec.node_name} Ready")


def _removing(spec: FenceSpec, state: FenceState, obs: Observation) -> Step:
    if state.node_deleted is None:
        return Command(Op.DELETE_NODE)
    if spec.action is Action.REBOOT:
        power = _power_on_step(spec, state, obs)
        if power is not None:
            return power
    return Transition(Phase.SUCCEEDED, "NodeRemoved", f"the Node object {spec.node_name} was deleted")


# --- applying steps and outcomes -----------------------------------------------------------------


def transition(state: FenceState, step: Transition, now: datetime) -> FenceState:
    """The state after ``step``: phase records, reason/message, conditions."""
    phases = state.phases
    if phases and phases[-1].finished is None:
        phases = (*phases[:-1], replace(phases[-1], finished=now))
    terminal = step.phase.terminal
    phases = (*phases, PhaseRecord(step.phase, now, now if terminal else None))
    new = replace(
        state,
        phase=step.phase,
        reason=step.reason,
        message=step.message,
        phases=phases,
        completed=now if terminal else None,
        target_uuid=step.target_uuid or state.target_uuid,
        target_boot_id=step.target_boot_id or state.target_boot_id,
        in_flight=None if terminal else state.in_flight,
    )
    if step.phase is Phase.SUCCEEDED:
        return _conditions(
            new,
            now,
            ("Processing", "False", "Completed", step.message),
            ("Succeeded", "True", step.reason, step.message),
        )
    if step.phase is Phase.FAILED:
        updates = [
            ("Processing", "False", "Failed", step.message),
            ("Succeeded", "False", step.reason, step.message),
        ]
        if state.off_verified is None:
            updates.append(("FenceVerified", "False", step.reason, "the host was not read back as off"))
        return _conditions(new, now, *updates)
    return _conditions(new, now, ("Processing", "True", step.phase.value, step.message))


def begin_power(state: FenceState, command: Command, now: datetime) -> FenceState:
    """Record, before anything goes to the BMC, that a power attempt is in flight."""
    assert command.level is not None
    flight = state.in_flight
    if flight is not None and flight.operation is command.op and flight.attempt == command.attempt:
        return state  # resuming it: keep commandSentAt and the resume count
    return replace(state, in_flight=InFlight(command.op, command.level, command.attempt, now))


def command_sent(state: FenceState, now: datetime) -> FenceState:
    """Record that the in-flight power command reached the BMC (it accepted it)."""
    assert state.in_flight is not None
    return replace(state, in_flight=replace(state.in_flight, command_sent=now))


def record_power(state: FenceState, outcome: PowerOutcome, now: datetime) -> FenceState:
    attempt = Attempt(
        operation=outcome.operation,
        level=outcome.level.index,
        level_type=outcome.level.type,
        driver=outcome.driver,
        attempt=outcome.attempt,
        started=outcome.started,
        duration_s=outcome.duration_s,
        succeeded=outcome.succeeded,
        command_sent=outcome.command_sent,
        error_class=outcome.error_class,
        message=outcome.message,
        retryable=outcome.retryable,
        resumed=outcome.resumed,
    )
    state = replace(
        state,
        attempts=(*state.attempts, attempt),
        in_flight=None,
        bmc_seconds=state.bmc_seconds + outcome.duration_s,
    )
    if not outcome.succeeded:
        return state
    if outcome.operation is Op.POWER_OFF:
        state = replace(state, off_verified=now, off_level=outcome.level.index)
        return _conditions(
            state, now, ("FenceVerified", "True", "PowerOffVerified", _verified_message(state))
        )
    return replace(state, on_verified=now)


def record_abandoned(state: FenceState, level: LevelInfo, now: datetime) -> FenceState:
    """An in-flight attempt resumed more than MAX_RESUMES times counts as failed."""
    flight = state.in_flight
    assert flight is not None
    outcome = PowerOutcome(
        operation=flight.operation,
        level=level,
        driver=level.description,
        attempt=flight.attempt,
        started=flight.started,
        duration_s=0.0,
        succeeded=False,
        command_sent=flight.command_sent is not None,
        error_class="Interrupted",
        message=f"the controller stopped {flight.resumes} times during this attempt",
        resumed=True,
    )
    return record_power(state, outcome, now)


def record_isolated(state: FenceState, was_unschedulable: bool, now: datetime) -> FenceState:
    return replace(state, isolated=now, was_unschedulable=was_unschedulable)


def record_released(state: FenceState, pods: int, volume_attachments: int, now: datetime) -> FenceState:
    return replace(state, released=now, pods_deleted=pods, volume_attachments_deleted=volume_attachments)


def record_node_deleted(state: FenceState, now: datetime) -> FenceState:
    return replace(state, node_deleted=now)


def record_restored(state: FenceState, now: datetime) -> FenceState:
    return replace(state, restored=now)


def record_wait(state: FenceState, seconds: float) -> FenceState:
    return replace(state, wait_seconds=state.wait_seconds + seconds)


def record_probe(spec: FenceSpec, state: FenceState, probe: ProbeOutcome) -> FenceState:
    """The dry-run plan: what would be done, and whether the checks passed."""
    node = spec.node_name
    plan = [f"cordon node {node}; taint it {FENCING_TAINT_KEY}:NoSchedule"]
    usable = [lv for lv, err, _ in probe.levels if err is None]
    for level, err, detail in probe.levels:
        verdict = "ok" if err is None else f"FAILS ({err})"
        plan.append(
            f"power off via {level.description} (up to {level.attempts} attempts): {verdict}: {detail}"
        )
    plan.append(
        f"after Off is read back: taint {OUT_OF_SERVICE_TAINT_KEY}={OUT_OF_SERVICE_TAINT_VALUE}:NoExecute, "
        f"force-delete {probe.pods} pod(s), delete {probe.volume_attachments} VolumeAttachment(s)"
    )
    if spec.after is AfterFence.REMOVE:
        plan.append(f"delete the Node object {node}" + ("; power the host on" if spec.powers_on else ""))
    elif spec.powers_on:
        plan.append(
            f"power the host on; wait up to {spec.recovery_timeout_s:g}s for {node} to be Ready; "
            "remove the taints and uncordon"
        )
    else:
        plan.append("leave the host off and the node cordoned and tainted")
    mismatch = next(((lv, d) for lv, err, d in probe.levels if err == R_IDENTITY_MISMATCH), None)
    if mismatch is not None:
        reason, message = R_IDENTITY_MISMATCH, f"dry run: {mismatch[0].description}: {mismatch[1]}"
    elif not usable:
        reason, message = (
            R_DRY_RUN_FAILED,
            "dry run: no fence level passed its checks; a real fence would fail",
        )
    else:
        reason, message = "DryRunChecked", f"dry run: {len(usable)} of {len(probe.levels)} level(s) usable"
    return replace(state, plan=tuple(plan), reason=reason, message=message)


# --- describing where a node was left ------------------------------------------------------------


def describe_left_state(spec: FenceSpec, state: FenceState) -> str:
    """One sentence for an Event: what the node and its host look like after the fence stopped here."""
    node = spec.node_name
    parts: list[str] = []
    if state.dry_run:
        return f"dry run stopped in phase {state.phase.value}; node {node} was not changed"
    if state.isolated is None:
        parts.append(f"node {node} was not changed (not cordoned, not tainted)")
    elif state.restored is not None:
        parts.append(f"node {node} is back in service (taints removed)")
    elif state.node_deleted is not None:
        parts.append(f"the Node object {node} was deleted")
    else:
        cordon = "still cordoned" if not state.was_unschedulable else "cordoned (it was before)"
        parts.append(f"node {node} is {cordon} and tainted {FENCING_TAINT_KEY}")
    if state.off_verified is not None:
        parts.append("its host's power-off was verified")
    elif state.in_flight is not None and state.in_flight.command_sent is not None:
        parts.append("a power-off was sent but NOT verified: the host may still run")
    elif state.isolated is not None:
        parts.append("its host was NOT verified off: the host may still run")
    if state.on_verified is not None:
        parts.append("the host was powered on again")
    if state.released is not None:
        parts.append(
            f"its workloads were released ({state.pods_deleted} pod(s) force-deleted, "
            f"{state.volume_attachments_deleted} VolumeAttachment(s) deleted, out-of-service taint set)"
        )
    elif state.isolated is not None:
        parts.append("nothing was released (no out-of-service taint, no pods force-deleted)")
    return "; ".join(parts)


def controller_seconds(state: FenceState, created: datetime) -> float | None:
    """Time the fence took minus BMC calls and node waits: the controller's own share."""
    if state.completed is None:
        return None
    return (state.completed - created).total_seconds() - state.bmc_seconds - state.wait_seconds


def as_level_infos(levels: list[Any]) -> tuple[LevelInfo, ...]:
    """LevelInfo from NodeFencing levels (anything with index, type, describe() and attempts)."""
    return tuple(LevelInfo(lv.index, lv.type, lv.describe(), lv.attempts) for lv in levels)


def abandon_if_needed(state: FenceState, levels: tuple[LevelInfo, ...], now: datetime) -> FenceState:
    """Count an in-flight attempt as failed once it was resumed more than MAX_RESUMES times."""
    flight = state.in_flight
    if flight is None or flight.resumes <= MAX_RESUMES:
        return state
    level = next((lv for lv in levels if lv.index == flight.level), None)
    if level is None:
        level = LevelInfo(flight.level, "unknown", f"level {flight.level + 1}", 1)
    return record_abandoned(state, level, now)
