"""Leader election on a coordination.k8s.io/v1 Lease, so that two controller replicas never act at once.

Why not kopf's peering: kopf peering lets an operator *pause* when a peer with a higher priority is
seen, but peers of equal priority both keep running (kopf only warns), there is no fencing of a
stalled leader, and it needs kopf's own peering CRDs. Fencing hosts twice at once is exactly what must
not happen, so this module does what client-go's ``leaderelection`` package does:

* a replica acts only after it holds the Lease ``holderIdentity``; it takes a Lease held by someone
  else only after that holder's record has not changed for ``lease_duration`` seconds *as observed on
  this replica's own monotonic clock* (so clock skew between machines does not matter);
* the leader renews every ``renew_period``; if it cannot renew within ``renew_deadline`` (shorter than
  the lease duration) it calls ``on_lost``, which by default ends the process at once (``os._exit``):
  a leader that lost its Lease must stop before anyone else can start, and a process exit is the only
  way to stop a thread that is half-way through a BMC call;
* every write carries the read ``resourceVersion``, so two replicas racing for a free Lease cannot both win;
* on a clean shutdown the Lease is released (holder cleared), so a successor starts at once. A
  replica that restarts under the same identity (a Pod whose container restarted) takes its own
  Lease back at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube

log = logging.getLogger(__name__)

DEFAULT_LEASE_NAME = "remediator-controller"
DEFAULT_LEASE_DURATION = 15.0


def _hard_exit() -> None:
    log.critical("leadership lost: exiting now so that another replica can take over safely")
    logging.shutdown()
    os._exit(3)


@dataclass
class _Observed:
    holder: str | None
    renew_time: str | None
    seen_at: float


class LeaderElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        identity: str,
        *,
        name: str = DEFAULT_LEASE_NAME,
        lease_duration: float = DEFAULT_LEASE_DURATION,
        on_lost: Callable[[], None] = _hard_exit,
    ) -> None:
        if lease_duration < 2:
            raise ValueError("the lease duration must be at least 2 seconds")
        self.api = api
        self.coordination = client.CoordinationV1Api(api)
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.lease_duration = lease_duration
        self.renew_deadline = lease_duration * 2 / 3
        self.renew_period = max(lease_duration / 6, 0.2)
        self.on_lost = on_lost
        self._observed: _Observed | None = None
        self._last_renew = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False

    # --- one try ----------------------------------------------------------------------------------

    def _now(self) -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def _spec(self, *, acquire: bool, transitions: int) -> dict[str, Any]:
        now = self._now()
        spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(round(self.lease_duration), 1),
            "renewTime": now,
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = now
        return spec

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease afterwards."""
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            manifest = {
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(acquire=True, transitions=0),
            }
            try:
                self.coordination.create_namespaced_lease(self.namespace, kube.body(manifest))
            except ApiException as create_exc:
                if create_exc.status == 409:
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        holder = spec.holder_identity or None
        renew = spec.renew_time.isoformat() if spec.renew_time else None
        now = time.monotonic()
        if self._observed is None or (self._observed.holder, self._observed.renew_time) != (holder, renew):
            self._observed = _Observed(holder, renew, now)
        mine = holder == self.identity
        if holder and not mine:
            duration = float(spec.lease_duration_seconds or self.lease_duration)
            if now - self._observed.seen_at < duration:
                return False
            log.warning("Lease %s/%s held by %s expired; taking it", self.namespace, self.name, holder)
        transitions = int(spec.lease_transitions or 0) + (0 if mine else 1)
        version = lease.metadata.resource_version if lease.metadata else None
        patch = {
            "metadata": {"resourceVersion": version},
            "spec": self._spec(acquire=not mine, transitions=transitions),
        }
        if mine and spec.acquire_time is not None:
            patch["spec"].pop("acquireTime", None)
        try:
            self.coordination.patch_namespaced_lease(self.name, self.namespace, kube.body(patch))
        except ApiException as exc:
            if exc.status in (409, 404):
                return False
            raise
        return True

    # --- loops ----------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event | None = None, retry_period: float | None = None) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False)."""
        stop = stop or threading.Event()
        period = retry_period or self.renew_period
        announced = False
        while not stop.is_set():
            try:
                if self.try_acquire_or_renew():
                    self.is_leader = True
                    self._last_renew = time.monotonic()
                    log.info("leading as %s (Lease %s/%s)", self.identity, self.namespace, self.name)
                    return True
            except ApiException as exc:
                log.warning("Lease %s/%s: %s", self.namespace, self.name, exc.reason)
            if not announced:
                holder = self._observed.holder if self._observed else None
                log.info("standing by: Lease %s/%s is held by %s", self.namespace, self.name, holder)
                announced = True
            stop.wait(period)
        return False

    def start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.renew_period):
            try:
                ok = self.try_acquire_or_renew()
            except ApiException as exc:
                log.warning("renewing Lease %s/%s failed: %s", self.namespace, self.name, exc.reason)
                ok = False
            except Exception as exc:  # any failure to renew counts against the deadline
                log.warning("renewing Lease %s/%s failed: %s", self.namespace, self.name, type(exc).__name__)
                ok = False
            if ok:
                self._last_renew = time.monotonic()
            elif self._observed is not None and self._observed.holder not in (None, self.identity):
                self.is_leader = False
                log.error("Lease %s/%s was taken by %s", self.namespace, self.name, self._observed.holder)
                self.on_lost()
                return
            elif time.monotonic() - self._last_renew > self.renew_deadline:
                self.is_leader = False
                log.error(
                    "could not renew Lease %s/%s within %.1fs", self.namespace, self.name, self.renew_deadline
                )
                self.on_lost()
                return

    def release(self) -> None:
        """Stop renewing and clear the holder so that a successor can start at once."""
        self._stop.set()
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return
            version = lease.metadata.resource_version if lease.metadata else None
            patch = {
                "metadata": {"resourceVersion": version},
                "spec": {"holderIdentity": None, "renewTime": None},
            }
            self.coordination.patch_namespaced_lease(self.name, self.namespace, kube.body(patch))
            log.info("released Lease %s/%s", self.namespace, self.name)
        except ApiException as exc:
            log.warning("releasing Lease %s/%s failed: %s", self.namespace, self.name, exc.reason)
