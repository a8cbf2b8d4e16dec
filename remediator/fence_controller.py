"""The I/O side of the Fence controller: carries out the steps :mod:`remediator.workflow` decides.

:class:`FenceRunner` drives one Fence from its current ``status`` to a terminal phase: it observes the
node, the node's ``NodeFencing`` and the other Fences, asks :func:`workflow.next_step` what to do,
does it (Kubernetes calls through :mod:`remediator.kube`, power calls through the fence drivers and
:mod:`remediator.fencing.verify`), and writes the new state to ``status`` *before and after* every
action that matters. That ordering is what makes a restart safe:

* a power attempt is written to ``status.inFlight`` before anything goes to the BMC, and
  ``inFlight.commandSentAt`` right after the BMC accepted the command; a controller that restarts with
  ``commandSentAt`` set re-verifies by reading the power state instead of sending the command again;
* ``facts.powerOffVerifiedAt`` is written as soon as Off was read back; from then on no power-off is
  ever sent again for this Fence.

The runner checks ``stopped`` between steps only: a step in progress (a BMC call with its read-back
deadline, a status write) always completes, which is the "safe point" a deleted Fence stops at.
Nothing here decides anything; kopf wiring lives in :mod:`remediator.handlers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube, metrics
from remediator import workflow as wf
from remediator.errors import ConfigError, FenceError, RemediatorError
from remediator.fencing.base import PowerDriver, PowerState
from remediator.fencing.verify import check_identity, wait_for_power_state

log = logging.getLogger(__name__)

GROUP = "remediator.io"
VERSION = "v1alpha1"
PLURAL = "fences"
KIND = "Fence"
CONTROLLER_NAMESPACE_DEFAULT = "remediator-system"
#: Debug pause point after a power-off command was accepted and recorded (see Settings.pause_at).
PAUSE_AFTER_OFF_SENT = "PoweringOff:sent"


@dataclass(frozen=True)
class Settings:
    """Controller-wide settings (one frozen object, built at start-up, kept in kopf's memo)."""

    namespace: str = CONTROLLER_NAMESPACE_DEFAULT
    dry_run: bool = False
    #: The node this controller runs on (from NODE_NAME); never fenced.
    own_node: str | None = None
    #: Debugging/testing aid: phases (or ``PoweringOff:sent``) at which the runner stops and waits,
    #: after the state was written, so that a test can kill the process exactly there.
    pause_at: frozenset[str] = field(default_factory=frozenset)


def now_utc() -> datetime:
    return datetime.now(UTC)


def fence_ref(body: dict[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta.get("name"),
        "uid": meta.get("uid"),
    }


def get_fence(api: client.ApiClient, name: str) -> dict[str, Any] | None:
    try:
        obj: Any = client.CustomObjectsApi(api).get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(obj)


def list_fences(api: client.ApiClient) -> list[dict[str, Any]]:
    result: Any = client.CustomObjectsApi(api).list_cluster_custom_object(GROUP, VERSION, PLURAL)
    return list(result.get("items", []))


def competing_fences(me: dict[str, Any], others: list[dict[str, Any]]) -> tuple[str, ...]:
    """Other active Fences of the same node that take precedence over ``me``.

    Precedence: a Fence that got past Pending always wins; between Pending ones the older wins
    (creation time, then name), so two Fences created together never both proceed.
    """
    my_meta = me.get("metadata") or {}
    my_node = (me.get("spec") or {}).get("nodeName")
    my_key = (str(my_meta.get("creationTimestamp", "")), str(my_meta.get("name", "")))
    out = []
    for other in others:
        meta = other.get("metadata") or {}
        if meta.get("name") == my_meta.get("name") or (other.get("spec") or {}).get("nodeName") != my_node:
            continue
        if meta.get("deletionTimestamp"):
            continue
        phase = wf.Phase((other.get("status") or {}).get("phase") or wf.Phase.PENDING.value)
        if phase.terminal:
            continue
        key = (str(meta.get("creationTimestamp", "")), str(meta.get("name", "")))
        if phase is not wf.Phase.PENDING or key < my_key:
            out.append(f"{meta.get('name')} ({phase.value})")
    return tuple(out)


def node_facts(node: client.V1Node | None, lease_renewed: Any = None) -> wf.NodeFacts | None:
    if node is None:
        return None
    heartbeat = kube.node_condition_heartbeat(node, "Ready")
    return wf.NodeFacts(
        system_uuid=kube.node_system_uuid(node),
        boot_id=kube.node_boot_id(node),
        ready=kube.node_ready_status(node),
        ready_heartbeat=wf.parse_time(heartbeat) if heartbeat is not None else None,
        unschedulable=bool(node.spec.unschedulable) if node.spec else False,
        lease_renewed=wf.parse_time(lease_renewed) if lease_renewed is not None else None,
    )


class FenceGone(RemediatorError):
    """The Fence object disappeared while it was being processed."""


class FenceRunner:
    """Runs one Fence to a terminal phase (or until ``stopped``). One runner per Fence at a time."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        name: str,
        *,
        stopped: Callable[[], bool] = lambda: False,
        wait: Callable[[float], object] = time.sleep,
    ) -> None:
        self.api = api
        self.settings = settings
        self.name = name
        self._stopped = stopped
        self._wait = wait
        self._levels: list[Any] | None = None
        self._level_error: tuple[str, str] | None = None
        self._drivers: dict[int, PowerDriver] = {}
        self._body: dict[str, Any] = {}
        self.spec: wf.FenceSpec | None = None
        self.state = wf.FenceState()

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> wf.FenceState:
        body = get_fence(self.api, self.name)
        if body is None:
            return self.state
        self._body = body
        self.state = wf.FenceState.from_status(body.get("status"))
        if self.state.phase.terminal:
            return self.state
        generation = int((body.get("metadata") or {}).get("generation", 0))
        try:
            self.spec = wf.FenceSpec.from_dict(body.get("spec") or {})
        except ValueError as exc:
            self.state = wf.begin(self.state, wf.FenceSpec("?"), now_utc(), generation, self.settings.dry_run)
            self._transition(wf.Transition(wf.Phase.FAILED, "InvalidSpec", str(exc)))
            return self.state
        try:
            if self.state.started is None:
                self.state = wf.begin(self.state, self.spec, now_utc(), generation, self.settings.dry_run)
                self._persist()
                self._event("Normal", "Pending", self.state.message)
                self._pause_if_asked(wf.Phase.PENDING.value)
            else:
                self.state = wf.resume(self.state)
                self._persist()
                self._event(
                    "Normal", "Resumed", f"controller resumed this Fence in phase {self.state.phase.value}"
                )
            while not self._stopped():
                if not self._step():
                    break
        except FenceGone:
            log.info("Fence %s was deleted while being processed", self.name)
        finally:
            for driver in self._drivers.values():
                try:
                    driver.close()
                except FenceError as exc:
                    log.debug("closing %s: %s", driver.name, exc)
        return self.state

    def _step(self) -> bool:
        assert self.spec is not None
        obs = self._observe()
        self.state = wf.abandon_if_needed(self.state, obs.levels, obs.now)
        step = wf.next_step(self.spec, self.state, obs)
        if isinstance(step, wf.Done):
            return False
        if isinstance(step, wf.Transition):
            self._transition(step)
            return not step.phase.terminal and self._pause_if_asked(step.phase.value)
        if isinstance(step, wf.Wait):
            start = time.monotonic()
            self._wait(step.seconds)
            self.state = wf.record_wait(self.state, time.monotonic() - start)
            return True
        self._execute(step, obs)
        return True

    def _pause_if_asked(self, point: str) -> bool:
        """Debug/test aid: stop here (state already written) until the process is killed or stopped."""
        if point not in self.settings.pause_at:
            return True
        log.warning("Fence %s: pausing at %s (--pause-at); kill or stop the controller", self.name, point)
        while not self._stopped():
            self._wait(0.2)
        return False

    # --- observation -----------------------------------------------------------------------------

    def _observe(self) -> wf.Observation:
        assert self.spec is not None
        phase = self.state.phase
        node = kube.read_node_or_none(self.api, self.spec.node_name)
        needs_levels = phase in (
            wf.Phase.PENDING,
            wf.Phase.POWERING_OFF,
            wf.Phase.RECOVERING,
            wf.Phase.REMOVING,
        )
        levels: tuple[wf.LevelInfo, ...] = ()
        if needs_levels:
            self._load_levels(check_credentials=phase is wf.Phase.PENDING)
            levels = wf.as_level_infos(self._levels or [])
        competing: tuple[str, ...] = ()
        if phase is wf.Phase.PENDING:
            competing = competing_fences(self._body, list_fences(self.api))
        lease = None
        if phase is wf.Phase.RECOVERING and node is not None and self.state.on_verified is not None:
            lease = kube.node_lease_renew_time(self.api, self.spec.node_name)
        return wf.Observation(
            now=now_utc(),
            node=node_facts(node, lease),
            levels=levels,
            config_error=self._level_error if phase is wf.Phase.PENDING else None,
            competing=competing,
            own_node=self.settings.own_node,
            controller_dry_run=self.settings.dry_run,
        )

    def _load_levels(self, *, check_credentials: bool) -> None:
        """Read the node's NodeFencing once per run; in Pending also check every level's Secret."""
        from remediator import nodefencing

        assert self.spec is not None
        if self._levels is not None:
            return
        try:
            spec = nodefencing.read_node_fencing(self.api, self.spec.node_name)
        except nodefencing.NodeFencingNotFound as exc:
            self._levels, self._level_error = [], ("NoNodeFencing", str(exc))
            return
        except ConfigError as exc:
            self._levels, self._level_error = [], ("InvalidNodeFencing", str(exc))
            return
        self._levels = list(spec.levels)
        if not check_credentials:
            return
        problems: list[ConfigError] = []
        for level in spec.levels:
            try:
                self._driver(level)
            except ConfigError as exc:
                problems.append(exc)
        if problems and len(problems) == len(spec.levels):
            reason = type(problems[0]).__name__
            self._level_error = (reason, "no usable fence level: " + "; ".join(str(p) for p in problems))

    def _driver(self, level: Any) -> PowerDriver:
        from remediator import nodefencing

        assert self.spec is not None
        driver = self._drivers.get(level.index)
        if driver is None:
            driver = nodefencing.open_level_driver(
                level, self.api, self.settings.namespace, self.spec.node_name
            )
            self._drivers[level.index] = driver
        return driver

    def _level(self, index: int) -> Any:
        for level in self._levels or []:
            if level.index == index:
                return level
        raise ConfigError(
            f"the NodeFencing of node {self.spec.node_name if self.spec else '?'} has no level {index + 1}"
        )

    # --- status and events ---------------------------------------------------------------------

    def _persist(self) -> None:
        try:
            client.CustomObjectsApi(self.api).patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, self.name, {"status": self.state.to_status()}
            )
        except ApiException as exc:
            if exc.status == 404:
                raise FenceGone(self.name) from exc
            raise

    def _event(self, event_type: str, reason: str, message: str, *, on_node: bool = False) -> None:
        try:
            kube.post_event(self.api, fence_ref(self._body), event_type, reason, message)
            if on_node and self.spec is not None:
                node_ref = {"apiVersion": "v1", "kind": "Node", "name": self.spec.node_name}
                kube.post_event(
                    self.api, node_ref, event_type, f"Fence{reason}", f"Fence {self.name}: {message}"
                )
        except ApiException as exc:  # an Event is a report, never a reason to stop a fence
            log.warning("could not post event %s for Fence %s: %s", reason, self.name, exc.reason)

    def _transition(self, step: wf.Transition) -> None:
        self.state = wf.transition(self.state, step, now_utc())
        self._persist()
        if step.phase.terminal and self.spec is not None:
            phases = [
                (p.phase.value, (p.finished - p.started).total_seconds())
                for p in self.state.phases
                if p.finished is not None
            ]
            total = sum(seconds for _, seconds in phases)
            action = self.spec.action.value
            metrics.observe_fence_finished(action, step.phase.value, self.state.dry_run, total, phases)
        event_type = "Warning" if step.phase is wf.Phase.FAILED else "Normal"
        key_phase = step.phase in (wf.Phase.ISOLATING, wf.Phase.VERIFIED, wf.Phase.SUCCEEDED, wf.Phase.FAILED)
        self._event(event_type, step.phase.value, step.message, on_node=key_phase)
        log.info("Fence %s: %s (%s): %s", self.name, step.phase.value, step.reason, step.message)

    # --- commands ------------------------------------------------------------------------------

    def _execute(self, command: wf.Command, obs: wf.Observation) -> None:
        assert self.spec is not None
        node = self.spec.node_name
        op = command.op
        if op is wf.Op.PROBE:
            self._probe(obs)
        elif op is wf.Op.ISOLATE:
            was = kube.set_node_unschedulable(self.api, node, True)
            kube.add_node_taints(
                self.api,
                node,
                # NoSchedule only: nothing new lands, and nothing is evicted before the host is
                # proven off -- an eviction now would let a workload start elsewhere while the old
                # copy may still run. Release (out-of-service, NoExecute) comes after Verified.
                [{"key": wf.FENCING_TAINT_KEY, "value": self.name, "effect": "NoSchedule"}],
            )
            self.state = wf.record_isolated(self.state, bool(was), now_utc())
            self._persist()
        elif op in (wf.Op.POWER_OFF, wf.Op.POWER_ON):
            self._power(command)
        elif op is wf.Op.RELEASE:
            kube.add_node_taints(
                self.api,
                node,
                [
                    {
                        "key": wf.OUT_OF_SERVICE_TAINT_KEY,
                        "value": wf.OUT_OF_SERVICE_TAINT_VALUE,
                        "effect": "NoExecute",
                    }
                ],
            )
            pods = kube.force_delete_node_pods(self.api, node)
            attachments = kube.delete_node_volume_attachments(self.api, node)
            self.state = wf.record_released(self.state, pods, attachments, now_utc())
            self._persist()
            self._event(
                "Normal",
                "Released",
                f"out-of-service taint set; {pods} pod(s) force-deleted; "
                f"{attachments} VolumeAttachment(s) deleted",
                on_node=True,
            )
        elif op is wf.Op.RESTORE:
            kube.remove_node_taints(self.api, node, {wf.OUT_OF_SERVICE_TAINT_KEY, wf.FENCING_TAINT_KEY})
            if not self.state.was_unschedulable:
                kube.set_node_unschedulable(self.api, node, False)
            self.state = wf.record_restored(self.state, now_utc())
            self._persist()
        elif op is wf.Op.DELETE_NODE:
            kube.delete_node(self.api, node)
            self.state = wf.record_node_deleted(self.state, now_utc())
            self._persist()
        else:  # pragma: no cover - every Op is handled above
            raise AssertionError(op)

    def _power(self, command: wf.Command) -> None:
        """One verified power attempt through one level; the outcome (good or bad) goes to status."""
        assert command.level is not None
        level = self._level(command.level)
        info = wf.as_level_infos([level])[0]
        self.state = wf.begin_power(self.state, command, now_utc())
        self._persist()
        started_at = now_utc()
        start = time.monotonic()
        own = 0.0  # time spent writing status inside the attempt: the controller's, not the BMC's
        target = PowerState.OFF if command.op is wf.Op.POWER_OFF else PowerState.ON
        sent = command.reverify
        driver_name = info.description
        error: Exception | None = None
        try:
            driver = self._driver(level)
            driver_name = driver.describe()
            check_identity(driver, self.state.target_uuid)
            if command.reverify:
                log.info(
                    "Fence %s: re-verifying %s after a restart (command was sent)", self.name, target.value
                )
            elif driver.power_state() is not target:
                if target is PowerState.OFF:
                    driver.power_off()
                else:
                    driver.power_on()
                sent = True
                mark = time.monotonic()
                self.state = wf.command_sent(self.state, now_utc())
                self._persist()
                own += time.monotonic() - mark
                if command.op is wf.Op.POWER_OFF and not self._pause_if_asked(PAUSE_AFTER_OFF_SENT):
                    return
            wait_for_power_state(driver, target, level.power_timeout_s)
        except (FenceError, ConfigError) as exc:
            error = exc
            broken = self._drivers.pop(level.index, None)
            if broken is not None:
                try:
                    broken.close()
                except FenceError as close_exc:
                    log.debug("closing %s: %s", driver_name, close_exc)
        outcome = wf.PowerOutcome(
            operation=command.op,
            level=info,
            driver=driver_name,
            attempt=command.attempt,
            started=started_at,
            duration_s=time.monotonic() - start - own,
            succeeded=error is None,
            command_sent=sent,
            error_class=type(error).__name__ if error is not None else None,
            message=str(error)[:500] if error is not None else f"{target.value} read back",
            retryable=bool(getattr(error, "retryable", False)) if error is not None else True,
            resumed=command.resumed,
        )
        self.state = wf.record_power(self.state, outcome, now_utc())
        self._persist()
        metrics.observe_power_attempt(level.type, command.op.value, outcome.duration_s, outcome.error_class)
        if error is not None:
            self._event(
                "Warning",
                "AttemptFailed",
                f"{command.op.value} via {info.description} attempt {command.attempt}: "
                f"{type(error).__name__}: {str(error)[:300]}",
            )

    def _probe(self, obs: wf.Observation) -> None:
        """Dry run: credentials, reachability (a power-state read) and identity of every level."""
        assert self.spec is not None
        results: list[tuple[wf.LevelInfo, str | None, str]] = []
        expected = obs.node.system_uuid if obs.node else None
        for level in self._levels or []:
            info = wf.as_level_infos([level])[0]
            try:
                driver = self._driver(level)
                state = driver.power_state()
                identity = check_identity(driver, expected)
                who = identity.system_uuid or "no UUID reported"
                results.append((info, None, f"reachable, power {state.value}, identity {who}"))
            except (FenceError, ConfigError) as exc:
                results.append((info, type(exc).__name__, str(exc)[:300]))
        pods = len(kube.node_pods(self.api, self.spec.node_name))
        attachments = len(kube.node_volume_attachments(self.api, self.spec.node_name))
        probe = wf.ProbeOutcome(tuple(results), pods, attachments)
        self.state = wf.record_probe(self.spec, self.state, probe)
        self._persist()


def on_fence_deleted(api: client.ApiClient, name: str, body: dict[str, Any]) -> str | None:
    """Say in an Event (on the Fence and on the Node) where a Fence deleted mid-way left its node."""
    state = wf.FenceState.from_status(body.get("status"))
    latest = get_fence(api, name)
    if latest is not None:
        state = wf.FenceState.from_status(latest.get("status"))
    if state.started is None or state.phase.terminal:
        return None
    try:
        spec = wf.FenceSpec.from_dict(body.get("spec") or {})
    except ValueError:
        return None
    message = (
        f"Fence deleted during phase {state.phase.value}; stopped at a safe point: "
        f"{wf.describe_left_state(spec, state)}"
    )
    runner = FenceRunner(api, Settings(), name)
    runner._body, runner.spec = body, spec
    runner._event("Warning", "Aborted", message, on_node=True)
    log.warning("Fence %s: %s", name, message)
    return message
