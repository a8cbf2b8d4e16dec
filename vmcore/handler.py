"""The vmcore handler: the per-node agent that runs the node's VM domains in its libvirt.

    python -m vmcore.handler --node NODE --libvirt-uri URI --kubeconfig PATH [--state-dir DIR]

It watches the VM pods bound to its node and libvirt's lifecycle events, and on every change
reconciles each VM through :func:`vmcore.decisions.decide_node`: it starts the domain of the VM's
designated pod (after recording its node in ``status.domains`` with a JSON-patch ``test``, so a pod
that is no longer designated never gets a domain), prepares the target side of a migration, migrates
a domain away when the controller asks (annotation on the source pod), reports domain state, and
destroys every domain without a designated pod here -- at start-up too, so a host that powers back on
never resumes what it ran before a fence. It writes only its own node's objects: pods bound to it and
its own key of ``status.domains``. Disk paths through symlinks are refused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from remediator import kube
from vmcore import api as vapi
from vmcore.decisions import NodeAction, PodView, decide_node
from vmcore.domain import build_domain_xml
from vmcore.errors import HypervisorError, MigrationFailed, VmError
from vmcore.views import pod_view
from vmcore.virt import Hypervisor, check_path, kvm_usable

log = logging.getLogger("vmcore.handler")

JSON_PATCH = "application/json-patch+json"
RESYNC_SECONDS = 2.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pointer(node: str) -> str:
    return "/status/domains/" + node.replace("~", "~0").replace("/", "~1")


class NodeHandler:
    """Watches, decides and acts for one node."""

    def __init__(self, node: str, uri: str, api: client.ApiClient, state_dir: Path) -> None:
        self.node = node
        self.uri = uri
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.state_dir = state_dir
        self.hv = Hypervisor(uri)
        self.virt_type = "kvm" if kvm_usable() else "qemu"
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._synced = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._written_here: set[str] = set()  # pods whose entry this process recorded
        self._last_event: dict[str, str] = {}  # domain -> last lifecycle event
        self._migrations: dict[str, threading.Thread] = {}  # migration name -> worker

    # --- inputs -------------------------------------------------------------------------------

    def _on_domain_event(self, domain: str, event: str) -> None:
        self._last_event[domain] = event
        self._wake.set()

    def _watch_pods(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self._stop.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces(
                    field_selector=selector, label_selector=vapi.LABEL_VM
                )
                pods = {}
                for pod in listed.items:
                    raw = self.api.sanitize_for_serialization(pod)  # type: ignore[no-untyped-call]
                    pods[(raw["metadata"]["namespace"], raw["metadata"]["name"])] = raw
                with self._lock:
                    self._pods = pods
                    self._synced = True
                self._wake.set()
                version = listed.metadata.resource_version if listed.metadata else None
                for event in watch.Watch().stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    label_selector=vapi.LABEL_VM,
                    resource_version=version,
                    timeout_seconds=60,
                ):
                    raw = self.api.sanitize_for_serialization(event["object"])  # type: ignore[no-untyped-call]
                    key = (raw["metadata"]["namespace"], raw["metadata"]["name"])
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._pods.pop(key, None)
                        else:
                            self._pods[key] = raw
                    self._wake.set()
            except Exception as exc:  # the API may be unreachable (a partition): stop acting, retry
                with self._lock:
                    self._synced = False
                log.warning("pod watch: %s; retrying", exc)
                self._stop.wait(0.5)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.hv.connect(self._on_domain_event)
        log.info("connected to %s (%s); watching pods of %s", self.uri, self.virt_type, self.node)
        threading.Thread(target=self._watch_pods, name="pod-watch", daemon=True).start()
        while not self._stop.is_set():
            self._wake.wait(RESYNC_SECONDS)
            self._wake.clear()
            try:
                self.reconcile()
            except (ApiException, VmError, OSError) as exc:
                log.warning("reconcile: %s", exc)
                self._stop.wait(0.2)
                self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def reconcile(self) -> None:
        with self._lock:
            if not self._synced:
                return  # never act on a stale view of the pods
            pods = dict(self._pods)
        domains = self.hv.domains()
        listed: Any = self.custom.list_cluster_custom_object(vapi.GROUP, vapi.VERSION, vapi.VM_PLURAL)
        statuses = {
            (vm["metadata"]["namespace"], vm["metadata"]["name"]): vapi.parse_vm_status(vm.get("status"))
            for vm in listed.get("items", [])
        }
        vms: dict[tuple[str, str], dict[str, PodView]] = {}
        for key, status in statuses.items():
            if self.node in status.domains:
                vms.setdefault(key, {})
        raw_by_name: dict[str, dict[str, Any]] = {}
        for (namespace, _name), raw in pods.items():
            view = pod_view(raw)
            vm_name = str(raw["metadata"].get("labels", {}).get(vapi.LABEL_VM, ""))
            if not vm_name or view.deleting:
                vms.setdefault((namespace, vm_name), {})
                continue
            vms.setdefault((namespace, vm_name), {})[view.role] = view
            raw_by_name[view.name] = raw
        for domain in domains:
            ident = vapi.split_domain_name(domain)
            if ident is not None:
                vms.setdefault(ident, {})
            else:
                log.info("ignoring domain %s (not a vmcore VM)", domain)
        for (namespace, name), roles in vms.items():
            if not name:
                continue
            self._reconcile_vm(namespace, name, roles, domains, raw_by_name, statuses.get((namespace, name)))

    def _reconcile_vm(
        self,
        namespace: str,
        name: str,
        roles: Mapping[str, PodView],
        domains: Mapping[str, str],
        raw_by_name: Mapping[str, dict[str, Any]],
        status: vapi.VmStatus | None,
    ) -> None:
        domain = vapi.domain_name(namespace, name)
        if status is None:
            status = vapi.VmStatus()  # the VM is gone: nothing here is designated
        launcher = roles.get(vapi.ROLE_LAUNCHER)
        target = roles.get(vapi.ROLE_TARGET)
        actions = decide_node(
            self.node,
            launcher,
            target,
            status,
            domains.get(domain, ""),
            frozenset(self._written_here),
            self._last_event.get(domain, ""),
        )
        for action in actions:
            if action.kind != "none":
                log.info("%s/%s: %s %s %s", namespace, name, action.kind, action.pod, action.state)
            self._act(namespace, name, domain, action, raw_by_name)
        if launcher is not None and launcher.name == status.active_pod and domains.get(domain) == "running":
            self._maybe_migrate(namespace, name, domain, raw_by_name.get(launcher.name, {}))

    # --- actions ------------------------------------------------------------------------------

    def _patch_vm(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> bool:
        """A JSON patch of the VM's status; False when a ``test`` failed (someone else decided)."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                vapi.GROUP, vapi.VERSION, namespace, vapi.VM_PLURAL, name, ops, _content_type=JSON_PATCH
            )
        except ApiException as exc:
            if exc.status in (409, 422, 404):
                log.info("%s/%s: status patch refused (%s)", namespace, name, kube.api_error_message(exc))
                return False
            raise
        return True

    def _entry(
        self, pod: str, state: str, reason: str = "", message: str = "", since: dt.datetime | None = None
    ) -> Any:
        return vapi.DomainEntry(pod, state, since or _now(), reason, message).to_json(_now())

    def _act(
        self, namespace: str, name: str, domain: str, action: NodeAction, raws: Mapping[str, dict[str, Any]]
    ) -> None:
        path = _pointer(self.node)
        if action.kind == "start":
            ops = [
                {"op": "test", "path": "/status/activePod", "value": action.pod},
                {"op": "add", "path": path, "value": self._entry(action.pod, vapi.DOMAIN_STARTING)},
            ]
            if not self._patch_vm(namespace, name, ops):
                return
            self._written_here.add(action.pod)
            self._last_event.pop(domain, None)
            try:
                self._start(domain, raws[action.pod])
            except (VmError, KeyError) as exc:
                log.warning("%s: start failed: %s", domain, exc)
                entry = self._entry(action.pod, vapi.DOMAIN_FAILED, "StartFailed", str(exc)[:500])
                self._patch_vm(
                    namespace,
                    name,
                    [
                        {"op": "test", "path": f"{path}/pod", "value": action.pod},
                        {"op": "replace", "path": path, "value": entry},
                    ],
                )
                return
            entry = self._entry(action.pod, vapi.DOMAIN_RUNNING)
            self._patch_vm(
                namespace,
                name,
                [
                    {"op": "test", "path": f"{path}/pod", "value": action.pod},
                    {"op": "replace", "path": path, "value": entry},
                ],
            )
        elif action.kind == "prepare-target":
            ops = [
                {"op": "test", "path": "/status/activeMigration/targetPod", "value": action.pod},
                {"op": "add", "path": path, "value": self._entry(action.pod, vapi.DOMAIN_INCOMING)},
            ]
            if self._patch_vm(namespace, name, ops):
                self._written_here.add(action.pod)
                self._annotate(namespace, action.pod, {vapi.ANN_TARGET_URI: self.uri})
        elif action.kind == "mark-target-ready":
            self._annotate(namespace, action.pod, {vapi.ANN_TARGET_URI: self.uri})
        elif action.kind == "report":
            entry = self._entry(action.pod, action.state, action.reason, action.message)
            if action.reason == "Adopted":
                ops = [
                    {"op": "test", "path": "/status/activePod", "value": action.pod},
                    {"op": "add", "path": path, "value": entry},
                ]
            else:
                ops = [
                    {"op": "test", "path": f"{path}/pod", "value": action.pod},
                    {"op": "replace", "path": f"{path}/state", "value": action.state},
                    {"op": "replace", "path": f"{path}/reason", "value": action.reason},
                    {"op": "replace", "path": f"{path}/message", "value": action.message},
                    {"op": "replace", "path": f"{path}/updatedAt", "value": entry["updatedAt"]},
                ]
            self._patch_vm(namespace, name, ops)
        elif action.kind == "destroy":
            self.hv.destroy(domain)
            for image in (self.state_dir / "ephemeral").glob(f"{domain}--*.img"):
                image.unlink(missing_ok=True)
        elif action.kind == "clear-entry":
            self._patch_vm(
                namespace,
                name,
                [{"op": "test", "path": f"{path}/pod", "value": action.pod}, {"op": "remove", "path": path}],
            )

    def _start(self, domain: str, raw_pod: Mapping[str, Any]) -> None:
        annotation = raw_pod.get("metadata", {}).get("annotations", {}).get(vapi.ANN_DOMAIN, "")
        try:
            spec = vapi.parse_domain_spec(json.loads(annotation))
        except ValueError as exc:
            raise VmError(f"pod {raw_pod['metadata']['name']}: unreadable domain annotation") from exc
        paths: dict[str, str] = {}
        for disk in spec.spec.disks:
            if disk.kind == "image":
                paths[disk.name] = str(check_path(disk.path))
            else:
                directory = self.state_dir / "ephemeral"
                directory.mkdir(parents=True, exist_ok=True)
                image = check_path(str(directory / f"{domain}--{disk.name}.img"), must_exist=False)
                with image.open("wb") as out:
                    out.truncate(disk.size_mib * 1024 * 1024)
                paths[disk.name] = str(image)
        self.hv.start(build_domain_xml(spec, self.virt_type, paths))

    def _annotate(self, namespace: str, pod: str, annotations: Mapping[str, str | None]) -> None:
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod(pod, namespace, {"metadata": {"annotations": dict(annotations)}})

    # --- migration (source side) --------------------------------------------------------------

    def _maybe_migrate(self, namespace: str, name: str, domain: str, raw_pod: Mapping[str, Any]) -> None:
        annotations = raw_pod.get("metadata", {}).get("annotations", {}) or {}
        request_raw = annotations.get(vapi.ANN_MIGRATE)
        if not request_raw:
            return
        try:
            request = vapi.parse_migrate_request(json.loads(request_raw))
        except ValueError:
            return
        report_raw = annotations.get(vapi.ANN_MIGRATION_STATE)
        if report_raw:
            with contextlib.suppress(ValueError):
                if json.loads(report_raw).get("migration") == request.migration:
                    return  # already running or finished
        if request.migration in self._migrations:
            return
        pod = str(raw_pod["metadata"]["name"])
        annotation = annotations.get(vapi.ANN_DOMAIN, "{}")
        spec = vapi.parse_domain_spec(json.loads(annotation)).spec
        worker = threading.Thread(
            target=self._migrate,
            args=(namespace, pod, domain, request, bool(spec.disks)),
            name=f"migration-{request.migration}",
            daemon=True,
        )
        self._migrations[request.migration] = worker
        worker.start()

    def _migrate(
        self, namespace: str, pod: str, domain: str, request: vapi.MigrateRequest, unsafe: bool
    ) -> None:
        started = _now()
        last_sent = [0.0]
        seen = [0, 0]  # the last progress: percent, bytes sent

        def report(rep: vapi.MigrationReport) -> None:
            self._annotate(
                namespace, pod, {vapi.ANN_MIGRATION_STATE: json.dumps(rep.to_json(), sort_keys=True)}
            )

        def progress(percent: int, sent: int) -> None:
            seen[:] = [percent, max(sent, seen[1])]
            if time.monotonic() - last_sent[0] >= 0.5:
                last_sent[0] = time.monotonic()
                report(vapi.MigrationReport(request.migration, "Running", started, None, percent, sent))

        report(vapi.MigrationReport(request.migration, "Running", started))
        log.info("migrating %s to %s (%s)", domain, request.target_node, request.target_uri)
        try:
            result = self.hv.migrate(
                domain,
                request.target_uri,
                timeout=request.timeout_seconds,
                bandwidth_mibps=request.bandwidth_mibps,
                unsafe=unsafe,
                progress=progress,
            )
        except MigrationFailed as exc:
            log.warning("migration %s failed: %s", request.migration, exc)
            report(
                vapi.MigrationReport(
                    request.migration,
                    "Failed",
                    started,
                    _now(),
                    seen[0],
                    seen[1],
                    reason=exc.reason,
                    message=str(exc),
                )
            )
        except HypervisorError as exc:
            report(
                vapi.MigrationReport(
                    request.migration, "Failed", started, _now(), reason="MigrationFailed", message=str(exc)
                )
            )
        else:
            log.info("migrated %s in %d ms (downtime %s ms)", domain, result.elapsed_ms, result.downtime_ms)
            report(
                vapi.MigrationReport(
                    request.migration,
                    "Succeeded",
                    started,
                    _now(),
                    100,
                    result.transferred_bytes,
                    result.downtime_ms,
                )
            )
        self._wake.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmcore.handler", description=__doc__.split("\n")[0])
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument("--libvirt-uri", required=True, help="this node's libvirt, e.g. qemu:///system")
    parser.add_argument("--kubeconfig", type=Path, help="kubeconfig (default: in-cluster service account)")
    parser.add_argument("--state-dir", type=Path, default=Path("/var/lib/vmcore"), help="ephemeral disks")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = NodeHandler(args.node, args.libvirt_uri, kube.api_client(args.kubeconfig), args.state_dir)
    signal.signal(signal.SIGTERM, lambda *_: handler.stop())
    try:
        handler.run()
    except HypervisorError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
