"""The NodeHealthCheck controller: kopf glue around the pure policy in :mod:`remediator.health`.

* Nodes are watched by a lean :class:`~remediator.listwatch.ListWatch` (not kopf: at thousands of
  nodes kopf's per-event cost is most of a core) that keeps an in-memory index of
  :class:`~remediator.health.NodeView` (labels and condition transitions only) and passes on only
  views that changed. A change that touches nothing a policy reads wakes nobody: at thousands of
  nodes most events are heartbeats and status reports. What a policy reads is the node's labels and
  the conditions whose (type, status) one of its ``unhealthyConditions`` names; a new
  lastTransitionTime on any other condition (a kubelet or kwok re-reporting ``Ready=True``) is not.
  No policy is evaluated before the first full list of nodes (and leases) has arrived: a partial
  view could hide a storm.
* Policy events wake every policy only when a policy appears, goes, or its spec changes
  (``metadata.generation``): the daemons' own status patches come back as events too.
* Fence events keep the outcome of every Fence a policy created, and wake that policy.
* Leases in ``kube-node-lease`` (only with ``--lease-fast-path``), watched the same way, record
  renew times without waking anyone: the policy computes when a lease would go stale and wakes
  itself then.
* One async kopf daemon per NodeHealthCheck evaluates the policy, creates Fences, posts Events,
  updates metrics and status, then sleeps until the exact moment something can change (the
  verdict's ``requeue_after``) or until an event wakes it -- no polling.

Fences are created with the labels ``remediator.io/node`` and ``remediator.io/nodehealthcheck``;
before creating one the controller lists the node's Fences, so a restart between creating a Fence and
recording it in status adopts the Fence instead of creating a second one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import health, kube, metrics
from remediator.health import FenceOutcome, NodeView, Remediation
from remediator.listwatch import ListWatch

log = logging.getLogger(__name__)

GROUP = "remediator.io"
VERSION = "v1alpha1"
NHC_PLURAL = "nodehealthchecks"
FENCE_PLURAL = "fences"
NODE_LABEL = "remediator.io/node"
POLICY_LABEL = "remediator.io/nodehealthcheck"
SIGNALS_ANNOTATION = "remediator.io/signals"
UNHEALTHY_SINCE_ANNOTATION = "remediator.io/unhealthy-since"
#: A full re-evaluation at least this often, whatever happens (a safety net, not the mechanism).
RESYNC_SECONDS = 300.0
#: Lease renewals reach the policies in batches this far apart: thousands of kubelets renew every
#: few seconds, and leaseStaleAfter is many seconds (a renewal seen this much late does not matter).
LEASE_BATCH_SECONDS = 0.5
#: A Fence the API refused to create is tried again this soon.
CREATE_RETRY_SECONDS = 2.0


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _fmt(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def node_view(body: Any, lease_renewed_at: datetime | None = None) -> NodeView:
    """The policy's view of a Node object (a dict or kopf Body)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions: dict[str, tuple[str, datetime]] = {}
    for condition in status.get("conditions") or []:
        changed = _time(condition.get("lastTransitionTime"))
        if condition.get("type") and changed is not None:
            conditions[str(condition["type"])] = (str(condition.get("status")), changed)
    return NodeView(
        name=str(meta.get("name")),
        labels=dict(meta.get("labels") or {}),
        conditions=conditions,
        lease_renewed_at=lease_renewed_at,
    )


def fence_outcome(body: Any) -> FenceOutcome:
    phase = (body.get("status") or {}).get("phase")
    if phase == "Succeeded":
        return FenceOutcome.SUCCEEDED
    if phase == "Failed":
        return FenceOutcome.FAILED
    return FenceOutcome.ACTIVE


@dataclass
class HealthState:
    """What the NodeHealthCheck handlers share (kept in kopf's memo as ``memo.health``)."""

    api: Any
    nodes: dict[str, NodeView] = field(default_factory=dict)
    leases: dict[str, datetime] = field(default_factory=dict)
    #: fence name -> (policy, node, outcome)
    fences: dict[str, tuple[str, str, FenceOutcome]] = field(default_factory=dict)
    #: policy name -> (creation time, selector) for overlap detection
    policies: dict[str, tuple[datetime, health.LabelSelector]] = field(default_factory=dict)
    wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    #: policy name -> (metadata.generation, the (condition type, status) pairs its rules read)
    rules: dict[str, tuple[Any, frozenset[tuple[str, str]]]] = field(default_factory=dict)
    dry_run: bool = False
    watches: list[ListWatch[Any]] = field(default_factory=list)

    async def wait_synced(self) -> None:
        """Until every watch delivered its first full list."""
        for watch in self.watches:
            await watch.synced.wait()

    def node_change_matters(self, old: NodeView | None, new: NodeView) -> bool:
        """Whether a node's new view can change any policy's verdict (labels or watched conditions)."""
        if old is None or old.labels != new.labels or not self.wakers.keys() <= self.rules.keys():
            return True  # new node, new labels, or a running policy whose rules are not known yet
        watched: set[tuple[str, str]] = set()
        for _, pairs in self.rules.values():
            watched |= pairs
        return _watched_conditions(old, watched) != _watched_conditions(new, watched)

    def wake_all(self) -> None:
        for waker in self.wakers.values():
            waker.set()

    def wake(self, policy: str) -> None:
        waker = self.wakers.get(policy)
        if waker is not None:
            waker.set()


def _watched_conditions(view: NodeView, watched: set[tuple[str, str]]) -> set[tuple[str, str, datetime]]:
    return {(kind, status, at) for kind, (status, at) in view.conditions.items() if (kind, status) in watched}


def _rule_pairs(name: str, spec: Any) -> frozenset[tuple[str, str]]:
    """The (type, status) pairs of a policy's unhealthyConditions; none for an invalid policy (its
    daemon reports it Disabled whatever the nodes do)."""
    try:
        policy = health.parse_policy(name, dict(spec or {}))
    except (ValueError, KeyError, TypeError):
        return frozenset()
    return frozenset((c.type, c.status) for c in policy.unhealthy_conditions)


def _state(memo: Any) -> HealthState:
    state: HealthState = memo.health
    return state


# --- watches ------------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, *, lease_fast_path: bool) -> None:
    """Add the NodeHealthCheck handlers to ``registry`` (leases only when the fast path is wanted)."""
    kopf.on.startup(id="nhc-watches", registry=registry)(
        functools.partial(start_watches, lease_fast_path=lease_fast_path)
    )
    kopf.on.cleanup(id="nhc-watches-stop", registry=registry)(stop_watches)
    kopf.on.event(GROUP, VERSION, FENCE_PLURAL, id="nhc-fences", registry=registry)(on_fence_event)
    kopf.on.event(GROUP, VERSION, NHC_PLURAL, id="nhc-policy-changed", registry=registry)(on_policy_event)
    kopf.daemon(
        GROUP, VERSION, NHC_PLURAL, id="nodehealthcheck", cancellation_timeout=5.0, registry=registry
    )(policy_daemon)


async def start_watches(memo: kopf.Memo, lease_fast_path: bool, **_: Any) -> None:
    """Start the node (and lease) watches; the policies wait until they have listed everything."""
    state = _state(memo)
    loop = asyncio.get_running_loop()
    core = client.CoreV1Api(state.api)
    state.watches.append(
        ListWatch(core.list_node, node_view, functools.partial(apply_nodes, state), loop, name="nodes")
    )
    if lease_fast_path:
        leases = client.CoordinationV1Api(state.api)
        state.watches.append(
            ListWatch(
                functools.partial(leases.list_namespaced_lease, "kube-node-lease"),
                lease_renew_time,
                functools.partial(apply_leases, state),
                loop,
                name="node leases",
                coalesce_seconds=LEASE_BATCH_SECONDS,
            )
        )
    for watch in state.watches:
        watch.start()


async def stop_watches(memo: kopf.Memo, **_: Any) -> None:
    for watch in _state(memo).watches:
        await asyncio.to_thread(watch.stop)


def lease_renew_time(body: dict[str, Any]) -> datetime | None:
    return _time((body.get("spec") or {}).get("renewTime"))


def apply_nodes(state: HealthState, changes: dict[str, NodeView | None]) -> None:
    """Node views that changed (None: the node is gone); wakes the policies when one matters."""
    wake = False
    for name, changed in changes.items():
        if changed is None:
            wake = state.nodes.pop(name, None) is not None or wake
            continue
        lease = state.leases.get(name)
        view = changed if lease is None else replace(changed, lease_renewed_at=lease)
        old = state.nodes.get(name)
        if old != view:
            state.nodes[name] = view
            wake = wake or state.node_change_matters(old, view)
    if wake:
        state.wake_all()


def apply_leases(state: HealthState, changes: dict[str, datetime | None]) -> None:
    """Lease renew times. Policies compute when a lease goes stale and wake themselves; only a
    lease seen for the first time wakes them."""
    first = False
    for name, renewed in changes.items():
        if renewed is None:
            state.leases.pop(name, None)
            continue
        first = first or name not in state.leases
        state.leases[name] = renewed
        node = state.nodes.get(name)
        if node is not None:
            state.nodes[name] = replace(node, lease_renewed_at=renewed)
    if first:
        state.wake_all()


async def on_fence_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    body = event["object"]
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    policy = labels.get(POLICY_LABEL)
    if not policy:
        return
    name = str(meta.get("name"))
    if event["type"] == "DELETED":
        state.fences.pop(name, None)
        state.wake(policy)
        return
    outcome = fence_outcome(body)
    previous = state.fences.get(name)
    state.fences[name] = (policy, str(labels.get(NODE_LABEL, "")), outcome)
    _observe_verified(body, policy)
    if previous is None or previous[2] != outcome:
        state.wake(policy)


_VERIFIED_SEEN: set[str] = set()


def _observe_verified(body: Any, policy: str) -> None:
    """Once per Fence: the time from the node turning unhealthy to the Fence being verified."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name"))
    if name in _VERIFIED_SEEN:
        return
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "FenceVerified" and condition.get("status") == "True":
            since = _time((meta.get("annotations") or {}).get(UNHEALTHY_SINCE_ANNOTATION))
            verified = _time(condition.get("lastTransitionTime"))
            if since is not None and verified is not None:
                metrics.UNHEALTHY_TO_VERIFIED.labels(policy).observe((verified - since).total_seconds())
            _VERIFIED_SEEN.add(name)


async def on_policy_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    state = _state(memo)
    body = event["object"]
    meta = body.get("metadata") or {}
    name = str(meta.get("name"))
    if event["type"] == "DELETED":
        state.policies.pop(name, None)
        state.rules.pop(name, None)
    else:
        generation = meta.get("generation")
        known = state.rules.get(name)
        if name in state.policies and known is not None and known[0] == generation:
            return  # a status-only change (the daemon's own patches): nothing any policy reads
        spec = body.get("spec") or {}
        created = _time(meta.get("creationTimestamp")) or datetime.now(UTC)
        state.policies[name] = (created, health._parse_selector(spec.get("selector")))
        state.rules[name] = (generation, _rule_pairs(name, spec))
    state.wake_all()


# --- the per-policy daemon ----------------------------------------------------------------------


async def policy_daemon(
    name: str, body: kopf.Body, stopped: kopf.DaemonStopped, memo: kopf.Memo, **_: Any
) -> None:
    state = _state(memo)
    waker = state.wakers.setdefault(name, asyncio.Event())
    memory = health.memory_from_status(dict(body.get("status") or {}))
    last_status: dict[str, Any] | None = None
    try:
        await _until_synced(state, stopped)
        while not stopped:
            waker.clear()
            started = time.monotonic()
            memory, status, requeue = await _evaluate_once(state, name, body, memory)
            if status != last_status:
                await asyncio.to_thread(_patch_status, state.api, name, status)
                last_status = status
            log.debug("policy %s evaluated in %.1f ms", name, (time.monotonic() - started) * 1000)
            timeout = RESYNC_SECONDS if requeue is None else min(requeue, RESYNC_SECONDS)
            await _sleep_until_woken(waker, stopped, timeout)
    finally:
        state.wakers.pop(name, None)


async def _until_synced(state: HealthState, stopped: kopf.DaemonStopped) -> None:
    synced = asyncio.ensure_future(state.wait_synced())
    stop_task = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({synced, stop_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (synced, stop_task):
            task.cancel()


async def _sleep_until_woken(waker: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    wake_task = asyncio.ensure_future(waker.wait())
    stop_task = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({wake_task, stop_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (wake_task, stop_task):
            task.cancel()


async def _evaluate_once(
    state: HealthState, name: str, body: kopf.Body, memory: health.Memory
) -> tuple[health.Memory, dict[str, Any], float | None]:
    now = datetime.now(UTC)
    generation = (body.get("metadata") or {}).get("generation")
    try:
        policy = health.parse_policy(name, dict(body.get("spec") or {}))
    except (ValueError, KeyError, TypeError) as exc:
        status = _status_base(generation, now)
        status["conditions"] = [_condition("Disabled", "True", "InvalidPolicy", str(exc), generation, now)]
        return memory, status, None
    selected = [n for n in state.nodes.values() if policy.selector.matches(n.labels)]
    owned_elsewhere = _owned_elsewhere(state, name, selected)
    outcomes = {fence: outcome for fence, (pol, _, outcome) in state.fences.items() if pol == name}
    verdict = health.evaluate(
        policy, selected, memory, now, owned_elsewhere=owned_elsewhere, fence_outcomes=outcomes
    )
    memory = verdict.memory
    if verdict.storm_started:
        await _event(
            state, body, "Warning", reason="StormActive", message=f"{verdict.blocked}; no new remediation"
        )
    if verdict.storm_ended:
        await _event(
            state,
            body,
            "Normal",
            reason="StormEnded",
            message=f"{verdict.healthy} of {verdict.observed} nodes healthy",
        )
    for rem in verdict.escalated:
        metrics.REMEDIATIONS.labels(name, "failed").inc()
        await _event(
            state,
            body,
            "Warning",
            reason="RemediationEscalated",
            message=f"Fence {rem.fence} for node {rem.node} failed or is stuck past "
            f"{policy.escalation_timeout.total_seconds():g}s; the node needs an operator",
        )
    for rem in verdict.finished:
        if rem.outcome is FenceOutcome.SUCCEEDED:
            metrics.REMEDIATIONS.labels(name, "succeeded").inc()
        await _event(
            state,
            body,
            "Normal",
            reason="RemediationFinished",
            message=f"node {rem.node} is healthy (Fence {rem.fence})",
        )
    unhealthy_since = {v.node: v.unhealthy_since for v in verdict.nodes if v.unhealthy_since}
    requeue = verdict.requeue_after
    if state.dry_run:
        for create in verdict.create:
            await _event(
                state,
                body,
                "Normal",
                reason="WouldFence",
                message=f"dry run: would fence {create.node}: {create.reason}",
            )
    elif verdict.create:
        # Nodes that crossed their durations together get their Fences together, not one by one.
        results = await asyncio.gather(
            *(
                _create_fence(state, name, body, create, unhealthy_since.get(create.node) or now)
                for create in verdict.create
            )
        )
        fences = {create.node: fence for create, fence in zip(verdict.create, results, strict=True) if fence}
        memory = replace(
            memory,
            remediations={
                **memory.remediations,
                **{node: Remediation(node, fence, now) for node, fence in fences.items()},
            },
        )
        if len(fences) < len(verdict.create):
            requeue = min(requeue, CREATE_RETRY_SECONDS) if requeue is not None else CREATE_RETRY_SECONDS
    metrics.UNHEALTHY_NODES.labels(name).set(verdict.unhealthy)
    metrics.STORM_ACTIVE.labels(name).set(1 if memory.storm_active else 0)

    status = _status_base(generation, now)
    status.update(health.memory_to_status(memory))
    status.update(
        observedNodes=verdict.observed,
        healthyNodes=verdict.healthy,
        unhealthyNodes=verdict.unhealthy,
        unhealthy=[
            {
                "node": v.node,
                "since": _fmt(v.unhealthy_since) if v.unhealthy_since else None,
                "signals": list(v.signals),
                "fence": memory.remediations[v.node].fence if v.node in memory.remediations else None,
            }
            for v in verdict.nodes
            if v.state is health.NodeState.UNHEALTHY
        ],
    )
    storm = memory.storm_active
    blocked = verdict.blocked or ""
    cooling_down = not storm and blocked.startswith("StormCooldown")
    status["conditions"] = [
        _condition(
            "StormActive",
            "True" if storm else "False",
            "TooManyUnhealthy" if storm else "CoolingDown" if cooling_down else "WithinLimits",
            blocked if storm or cooling_down else f"{verdict.healthy} of {verdict.observed} nodes healthy",
            generation,
            now,
        ),
        _condition(
            "Disabled",
            "True" if policy.pause else "False",
            "Paused" if policy.pause else "Enabled",
            blocked if policy.pause else "remediating unhealthy nodes",
            generation,
            now,
        ),
    ]
    if owned_elsewhere:
        status["overlapping"] = sorted(owned_elsewhere)
    return memory, status, requeue


def _owned_elsewhere(state: HealthState, name: str, nodes: list[NodeView]) -> frozenset[str]:
    """Nodes this policy selects that an older overlapping policy owns."""
    if len(state.policies) < 2:
        return frozenset()
    policies = [(pol, created, selector) for pol, (created, selector) in state.policies.items()]
    return frozenset(
        n.name for n in nodes if health.owner_of_overlaps(policies, n.labels) not in (None, name)
    )


async def _event(state: HealthState, body: Any, event_type: str, *, reason: str, message: str) -> None:
    """A core/v1 Event about the NodeHealthCheck (kopf's own event posting is off in this operator)."""
    meta = body.get("metadata") or {}
    involved = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeHealthCheck",
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }
    try:
        await asyncio.to_thread(kube.post_event, state.api, involved, event_type, reason, message)
    except ApiException as exc:
        log.warning("could not post event %s: %s", reason, kube.api_error_message(exc))


def _status_base(generation: Any, now: datetime) -> dict[str, Any]:
    return {"observedGeneration": generation, "lastEvaluated": _fmt(now.replace(microsecond=0))}


def _condition(
    kind: str, status: str, reason: str, message: str, generation: Any, now: datetime
) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _fmt(now.replace(microsecond=0)),
        "observedGeneration": generation,
    }


def _patch_status(api: Any, name: str, status: dict[str, Any]) -> None:
    custom = client.CustomObjectsApi(api)
    current: Any = custom.get_cluster_custom_object(GROUP, VERSION, NHC_PLURAL, name)
    # Keep lastTransitionTime of conditions whose status did not change, and skip timestamps-only
    # rewrites (lastEvaluated) when nothing else changed.
    old_conditions = {c["type"]: c for c in (current.get("status") or {}).get("conditions") or []}
    for condition in status.get("conditions", []):
        old = old_conditions.get(condition["type"])
        if old is not None and old.get("status") == condition["status"]:
            condition["lastTransitionTime"] = old["lastTransitionTime"]
    try:
        custom.patch_cluster_custom_object_status(GROUP, VERSION, NHC_PLURAL, name, {"status": status})
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile
            raise


async def _create_fence(
    state: HealthState, policy: str, body: Any, create: health.CreateFence, unhealthy_since: datetime
) -> str | None:
    """Create (or adopt) one node's Fence and say so in an Event; None when the API refused or
    could not be reached."""
    try:
        fence = await asyncio.to_thread(
            _create_or_adopt_fence, state.api, policy, body, create, unhealthy_since
        )
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        log.warning(
            "policy %s: could not create a Fence for node %s (%s); trying again in %gs",
            policy,
            create.node,
            kube.api_error_message(exc),
            CREATE_RETRY_SECONDS,
        )
        return None
    state.fences.setdefault(fence, (policy, create.node, FenceOutcome.ACTIVE))
    metrics.REMEDIATIONS.labels(policy, "started").inc()
    await _event(
        state,
        body,
        "Normal",
        reason="FenceCreated",
        message=f"node {create.node}: Fence {fence} ({create.reason})",
    )
    return fence


def _create_or_adopt_fence(
    api: Any, policy: str, body: Any, create: health.CreateFence, unhealthy_since: datetime
) -> str:
    """Create the node's Fence, or return the name of one that is already active for it."""
    custom = client.CustomObjectsApi(api)
    existing: Any = custom.list_cluster_custom_object(
        GROUP, VERSION, FENCE_PLURAL, label_selector=f"{NODE_LABEL}={create.node}"
    )
    for item in existing.get("items", []):
        if fence_outcome(item) is FenceOutcome.ACTIVE:
            return str(item["metadata"]["name"])
    template = (body.get("spec") or {}).get("fenceTemplate") or {}
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Fence",
        "metadata": {
            "generateName": f"{create.node}-",
            "labels": {NODE_LABEL: create.node, POLICY_LABEL: policy},
            "annotations": {
                SIGNALS_ANNOTATION: json.dumps(list(create.signals)),
                UNHEALTHY_SINCE_ANNOTATION: _fmt(unhealthy_since),
            },
        },
        "spec": {
            "nodeName": create.node,
            "action": template.get("action", "Off"),
            "afterFence": template.get("afterFence", "PowerOn"),
            "reason": create.reason[:1000],
        },
    }
    created: Any = custom.create_cluster_custom_object(GROUP, VERSION, FENCE_PLURAL, kube.body(manifest))
    return str(created["metadata"]["name"])
