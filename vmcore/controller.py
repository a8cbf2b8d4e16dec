"""The vmcore controller: VirtualMachines -> VM pods, restarts after verified fences, migrations.

    python -m vmcore.controller [--kubeconfig PATH]

kopf delivers watch events (VirtualMachines, VM pods, VirtualMachineMigrations, Nodes, Fences); the
handlers at the bottom only update an in-memory cache and mark VMs dirty. One worker thread
reconciles dirty VMs, highest ``priority`` first (the recovery order after a node loss), through the
pure :func:`vmcore.decisions.decide_vm`, and carries out its plan: the VM's status first (a merge patch
with the read ``resourceVersion`` as precondition, so a decision made on stale data is never applied),
then pods, migrations, PDBs and Events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from vmcore import api as vapi
from vmcore.decisions import Plan, VmView, decide_vm, fence_verified_at, recovery_order
from vmcore.pods import pdb_manifest, pdb_name, vm_pod_manifest
from vmcore.views import migration_view, node_view, pod_view, vm_view

log = logging.getLogger("vmcore.controller")

RESYNC_SECONDS = 3.0
EVACUATION_RETRY_SECONDS = 10.0

Key = tuple[str, str]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def status_json(status: vapi.VmStatus, generation: int) -> dict[str, Any]:
    """The controller-owned part of ``status`` (``domains`` belongs to the handlers)."""
    migration = status.active_migration
    return {
        "phase": status.phase or "Pending",
        "nodeName": status.node_name,
        "activePod": status.active_pod,
        "activeMigration": (
            {"name": migration.name, "targetPod": migration.target_pod, "sourceNode": migration.source_node}
            if migration
            else None
        ),
        "lastExit": (
            {
                "reason": status.last_exit_reason,
                "node": status.last_exit_node,
                "at": vapi.format_time(status.last_exit_at or _now()),
            }
            if status.last_exit_reason
            else None
        ),
        "restarts": status.restarts,
        "observedGeneration": generation,
        "conditions": [c.to_json(generation) for c in sorted(status.conditions, key=lambda c: c.type)],
    }


class Reconciler:
    """The cache of watched objects and the one worker that acts on them."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.policy = client.PolicyV1Api(api)
        self._lock = threading.Condition()
        self.vms: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.migrations: dict[Key, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.fences: dict[str, dict[str, Any]] = {}
        self._dirty: set[Key] = set()
        self._pdbs: dict[Key, int] = {}  # VM -> the PDB's minAvailable (0: no PDB)
        self._events: dict[Key, tuple[str, str]] = {}
        self._evacuated: dict[Key, dt.datetime] = {}
        self._stop = threading.Event()

    # --- cache ----------------------------------------------------------------------------------

    def _mark(self, *keys: Key) -> None:
        with self._lock:
            self._dirty.update(k for k in keys if k[1])
            self._lock.notify()

    def _mark_all(self) -> None:
        with self._lock:
            self._dirty.update(self.vms)
            self._lock.notify()

    @staticmethod
    def _key(body: Mapping[str, Any]) -> Key:
        meta = body.get("metadata", {})
        return str(meta.get("namespace", "")), str(meta.get("name", ""))

    def on_vm(self, event: str, body: Mapping[str, Any]) -> None:
        key = self._key(body)
        with self._lock:
            if event == "DELETED":
                self.vms.pop(key, None)
            else:
                self.vms[key] = dict(body)
        self._mark(key)

    def on_pod(self, event: str, body: Mapping[str, Any]) -> None:
        key = self._key(body)
        with self._lock:
            if event == "DELETED":
                self.pods.pop(key, None)
            else:
                self.pods[key] = dict(body)
        vm = str(body.get("metadata", {}).get("labels", {}).get(vapi.LABEL_VM, ""))
        self._mark((key[0], vm))

    def on_migration(self, event: str, body: Mapping[str, Any]) -> None:
        key = self._key(body)
        with self._lock:
            if event == "DELETED":
                self.migrations.pop(key, None)
            else:
                self.migrations[key] = dict(body)
        self._mark((key[0], str(body.get("spec", {}).get("vmName", ""))))

    def on_node(self, event: str, body: Mapping[str, Any]) -> None:
        name = self._key(body)[1]
        with self._lock:
            if event == "DELETED":
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = dict(body)
        self._mark_all()

    def on_fence(self, event: str, body: Mapping[str, Any]) -> None:
        name = self._key(body)[1]
        with self._lock:
            if event == "DELETED":
                self.fences.pop(name, None)
            else:
                self.fences[name] = dict(body)
        self._mark_all()

    # --- the worker -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify()

    def run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if not self._dirty:
                    self._lock.wait(RESYNC_SECONDS)
                if not self._dirty:
                    self._dirty.update(self.vms)
                dirty, self._dirty = self._dirty, set()
                views = [vm_view(self.vms[k]) for k in dirty if k in self.vms]
            for view in recovery_order(views):
                try:
                    self.reconcile(view)
                except ApiException as exc:
                    log.warning("%s/%s: %s", view.namespace, view.name, kube.api_error_message(exc))
                    self._mark((view.namespace, view.name))
                    self._stop.wait(0.2)
                except Exception:
                    log.exception("%s/%s: reconcile failed", view.namespace, view.name)
                    self._mark((view.namespace, view.name))
                    self._stop.wait(1.0)

    def _inputs(
        self, vm: VmView
    ) -> tuple[list[Any], dict[str, Any], dict[str, dt.datetime], list[Any], frozenset[str]]:
        with self._lock:
            pods = [
                pod_view(p)
                for (ns, _), p in self.pods.items()
                if ns == vm.namespace
                and p.get("metadata", {}).get("labels", {}).get(vapi.LABEL_VM) == vm.name
            ]
            nodes = {name: node_view(n) for name, n in self.nodes.items()}
            fenced: dict[str, dt.datetime] = {}
            fencing: set[str] = set()
            for fence in self.fences.values():
                node = str(fence.get("spec", {}).get("nodeName", ""))
                phase = str(fence.get("status", {}).get("phase", ""))
                if phase not in ("Succeeded", "Failed"):
                    fencing.add(node)
                at = fence_verified_at(fence)
                if at is not None and (node not in fenced or at > fenced[node]):
                    fenced[node] = at
            migrations = [
                migration_view(m)
                for (ns, _), m in self.migrations.items()
                if ns == vm.namespace and m.get("spec", {}).get("vmName") == vm.name
            ]
        return pods, nodes, fenced, migrations, frozenset(fencing)

    def reconcile(self, vm: VmView) -> None:
        pods, nodes, fenced, migrations, fencing = self._inputs(vm)
        now = _now()
        new_pod = f"virt-launcher-{vm.name}-{secrets.token_hex(3)}"
        plan = decide_vm(vm, pods, nodes, fenced, migrations, now, new_pod, fencing)
        self.apply(vm, plan, now)

    # --- carrying out a plan --------------------------------------------------------------------

    def apply(self, vm: VmView, plan: Plan, now: dt.datetime) -> None:  # noqa: PLR0912, PLR0915
        key = (vm.namespace, vm.name)
        with self._lock:
            raw = self.vms.get(key)
        if raw is None:
            return
        current = raw.get("status") or {}
        wanted = status_json(plan.status, vm.generation)
        changed = {k: v for k, v in wanted.items() if not _same(current.get(k), v, k)}
        if changed or plan.clear_domains:
            patch: dict[str, Any] = {
                "metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]},
                "status": {**wanted, "domains": {n: None for n in plan.clear_domains}},
            }
            if not current.get("domains") and not plan.clear_domains:
                patch["status"]["domains"] = {}
            try:
                updated = self.custom.patch_namespaced_custom_object_status(
                    vapi.GROUP, vapi.VERSION, vm.namespace, vapi.VM_PLURAL, vm.name, patch
                )
            except ApiException as exc:
                if exc.status in (404, 409):
                    self._mark(key)  # changed under us: decide again on fresh data
                    return
                raise
            with self._lock:
                if key in self.vms and isinstance(updated, dict):
                    self.vms[key] = updated
        elif not current.get("domains") and "domains" not in current:
            self._init_domains(vm, raw)
        domain = vapi.DomainSpec(vm.namespace, vm.name, vm.uid, vm.spec) if vm.spec else None
        # The PDB counts every VM pod: raised before a pod is added, lowered after pods are deleted.
        with self._lock:
            live = {
                str(p["metadata"]["name"])
                for (ns, _), p in self.pods.items()
                if ns == vm.namespace
                and p.get("metadata", {}).get("labels", {}).get(vapi.LABEL_VM) == vm.name
                and not p.get("metadata", {}).get("deletionTimestamp")
            }
        if plan.create_pod is not None:
            live.add(plan.create_pod.name)
        if domain is not None and plan.want_pdb:
            self._ensure_pdb(domain, max(len(live), self._pdbs.get((vm.namespace, vm.name), 0), 1))
        if plan.create_pod is not None and domain is not None:
            manifest = vm_pod_manifest(
                domain,
                plan.create_pod.name,
                plan.create_pod.role,
                migration=plan.create_pod.migration,
                target_node=plan.create_pod.target_node,
                avoid_node=plan.create_pod.avoid_node,
            )
            try:
                created = self.core.create_namespaced_pod(vm.namespace, kube.body(manifest))
                raw_pod = self.api.sanitize_for_serialization(created)  # type: ignore[no-untyped-call]
                self.on_pod("ADDED", raw_pod)
            except ApiException as exc:
                if exc.status != 409:
                    self._event(vm, "Warning", "PodCreateFailed", kube.api_error_message(exc))
                    raise
        if plan.make_launcher:
            self.core.patch_namespaced_pod(
                plan.make_launcher,
                vm.namespace,
                {"metadata": {"labels": {vapi.LABEL_ROLE: vapi.ROLE_LAUNCHER, vapi.LABEL_MIGRATION: None}}},
            )
        for pod, force in plan.delete_pods:
            try:
                self.core.delete_namespaced_pod(pod, vm.namespace, grace_period_seconds=0 if force else None)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for pod, which, value in plan.annotate:
            annotation = vapi.ANN_MIGRATE if which == "migrate" else which
            try:
                self.core.patch_namespaced_pod(
                    pod, vm.namespace, {"metadata": {"annotations": {annotation: value}}}
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
        for name, fields in plan.migration_status.items():
            self._patch_migration(vm.namespace, name, fields)
        if plan.create_migration and domain is not None:
            self._evacuate(vm, plan.create_migration, now)
        if plan.consume_request:
            self.custom.patch_namespaced_custom_object(
                vapi.GROUP,
                vapi.VERSION,
                vm.namespace,
                vapi.VM_PLURAL,
                vm.name,
                {"metadata": {"annotations": {vapi.ANN_REQUESTED_STATE: None}}},
            )
        if domain is not None:
            remaining = live - {name for name, _ in plan.delete_pods}
            self._ensure_pdb(domain, max(len(remaining), 1) if plan.want_pdb else 0)
        for type_, reason, message in plan.events:
            self._event(vm, type_, reason, message)
        if plan.requeue_after is not None:
            timer = threading.Timer(plan.requeue_after, self._mark, args=(key,))
            timer.daemon = True
            timer.start()

    def _init_domains(self, vm: VmView, raw: Mapping[str, Any]) -> None:
        patch = {
            "metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]},
            "status": {"domains": {}},
        }
        try:
            self.custom.patch_namespaced_custom_object_status(
                vapi.GROUP, vapi.VERSION, vm.namespace, vapi.VM_PLURAL, vm.name, patch
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _patch_migration(self, namespace: str, name: str, fields: Mapping[str, object]) -> None:
        with self._lock:
            current = (self.migrations.get((namespace, name)) or {}).get("status") or {}
        if all(current.get(k) == v for k, v in fields.items()):
            return
        try:
            updated = self.custom.patch_namespaced_custom_object_status(
                vapi.GROUP, vapi.VERSION, namespace, vapi.MIGRATION_PLURAL, name, {"status": dict(fields)}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        with self._lock:
            if (namespace, name) in self.migrations and isinstance(updated, dict):
                self.migrations[(namespace, name)] = updated

    def _evacuate(self, vm: VmView, reason: str, now: dt.datetime) -> None:
        key = (vm.namespace, vm.name)
        last = self._evacuated.get(key)
        if last is not None and (now - last).total_seconds() < EVACUATION_RETRY_SECONDS:
            self._mark(key)
            return
        self._evacuated[key] = now
        name = f"evacuation-{vm.name}-{secrets.token_hex(3)}"
        body = {
            "apiVersion": vapi.API_VERSION,
            "kind": vapi.MIGRATION_KIND,
            "metadata": {"name": name, "namespace": vm.namespace, "labels": {vapi.LABEL_VM: vm.name}},
            "spec": {"vmName": vm.name, "reason": reason},
        }
        created = self.custom.create_namespaced_custom_object(
            vapi.GROUP, vapi.VERSION, vm.namespace, vapi.MIGRATION_PLURAL, body
        )
        if isinstance(created, dict):
            self.on_migration("ADDED", created)
        self._event(vm, "Normal", "Evacuating", f"{reason}: migrating live ({name})")

    def _ensure_pdb(self, domain: vapi.DomainSpec, min_available: int) -> None:
        """A PDB with ``minAvailable`` = the VM's pod count (0: none), created, resized or deleted."""
        key = (domain.namespace, domain.name)
        if self._pdbs.get(key) == min_available:
            return
        name = pdb_name(domain.name)
        try:
            if min_available and self._pdbs.get(key):
                self.policy.patch_namespaced_pod_disruption_budget(
                    name, domain.namespace, {"spec": {"minAvailable": min_available, "maxUnavailable": None}}
                )
            elif min_available:
                try:
                    self.policy.create_namespaced_pod_disruption_budget(
                        domain.namespace, kube.body(pdb_manifest(domain, min_available))
                    )
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    self.policy.patch_namespaced_pod_disruption_budget(
                        name,
                        domain.namespace,
                        {"spec": {"minAvailable": min_available, "maxUnavailable": None}},
                    )
            else:
                self.policy.delete_namespaced_pod_disruption_budget(name, domain.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self._pdbs[key] = min_available

    def _event(self, vm: VmView, type_: str, reason: str, message: str) -> None:
        key = (vm.namespace, vm.name)
        if self._events.get(key) == (reason, message):
            return
        self._events[key] = (reason, message)
        log.info("%s/%s: %s: %s", vm.namespace, vm.name, reason, message)
        involved = {
            "apiVersion": vapi.API_VERSION,
            "kind": vapi.VM_KIND,
            "name": vm.name,
            "namespace": vm.namespace,
            "uid": vm.uid,
        }
        try:
            kube.post_event(self.api, involved, type_, reason, message, component="vmcore-controller")
        except ApiException as exc:
            log.warning("event %s: %s", reason, kube.api_error_message(exc))


def _same(old: object, new: object, key: str) -> bool:
    """Status equality, ignoring the timestamps of unchanged conditions and lastExit."""
    if key == "conditions" and isinstance(old, list) and isinstance(new, list):

        def strip(items: list[Any]) -> list[Any]:
            return sorted(
                json.dumps({k: v for k, v in c.items() if k != "lastTransitionTime"}, sort_keys=True)
                for c in items
            )

        return strip(old) == strip(new)
    if key == "lastExit" and isinstance(old, dict) and isinstance(new, dict):
        return old.get("reason") == new.get("reason") and old.get("node") == new.get("node")
    return old == new or (old in (None, "", 0) and new in (None, "", 0) and key != "phase")


# --- kopf glue -------------------------------------------------------------------------------------


@kopf.on.login()
def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    if _KUBECONFIG[0] is not None:
        return kopf.login_with_kubeconfig(**kwargs)
    return kopf.login_with_service_account(**kwargs)


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    settings.watching.connect_timeout = 10
    settings.execution.max_workers = 8
    reconciler = Reconciler(kube.api_client(_KUBECONFIG[0]))
    memo.reconciler = reconciler
    threading.Thread(target=reconciler.run, name="vmcore-reconciler", daemon=True).start()


@kopf.on.cleanup()
def _cleanup(memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.stop()


@kopf.on.event(vapi.GROUP, vapi.VERSION, vapi.VM_PLURAL)
def _vm_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_vm(type or "ADDED", dict(body))


@kopf.on.event("", "v1", "pods", labels={vapi.LABEL_VM: kopf.PRESENT})
def _pod_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_pod(type or "ADDED", dict(body))


@kopf.on.event(vapi.GROUP, vapi.VERSION, vapi.MIGRATION_PLURAL)
def _migration_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_migration(type or "ADDED", dict(body))


@kopf.on.event("", "v1", "nodes")
def _node_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_node(type or "ADDED", dict(body))


@kopf.on.event("remediator.io", "v1alpha1", "fences")
def _fence_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.on_fence(type or "ADDED", dict(body))


_KUBECONFIG: list[Path | None] = [None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmcore.controller", description="the vmcore controller")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster service account)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    if args.kubeconfig:
        _KUBECONFIG[0] = args.kubeconfig.resolve()
        os.environ["KUBECONFIG"] = str(_KUBECONFIG[0])
    kopf.run(clusterwide=True, standalone=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
