"""Thin wrappers over the Kubernetes API client, shared by the controller, the CLI and the lab.

The generated client types every field as optional; the helpers here read the few fields we need
from Node objects without sprinkling ``None`` checks everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config

from remediator.errors import ConfigError


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """An API client from a kubeconfig file, or from the in-cluster service account when None."""
    if kubeconfig is None:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


def api_error_message(exc: Exception) -> str:
    """The API server's own message from an ApiException (its JSON Status), else the exception."""
    import json

    raw = getattr(exc, "body", None)
    if raw:
        try:
            status = json.loads(raw)
        except (TypeError, ValueError):
            return str(raw)[:500]
        if isinstance(status, dict) and status.get("message"):
            return str(status["message"])
    return f"{getattr(exc, 'status', '')} {getattr(exc, 'reason', exc)}".strip()


def body(manifest: dict[str, Any]) -> Any:
    """A plain manifest as a request body: the client accepts dicts where it declares model types."""
    return manifest


def node_name(node: client.V1Node) -> str:
    return str(node.metadata.name) if node.metadata and node.metadata.name else ""


def node_condition_status(node: client.V1Node, condition_type: str) -> str | None:
    """The status ("True", "False", "Unknown") of one node condition, or None when absent."""
    conditions = node.status.conditions if node.status and node.status.conditions else []
    for condition in conditions:
        if condition.type == condition_type:
            return str(condition.status)
    return None


def node_ready_status(node: client.V1Node) -> str | None:
    return node_condition_status(node, "Ready")


def node_taints(node: client.V1Node) -> list[tuple[str, str]]:
    """(key, effect) of every taint on the node."""
    taints = node.spec.taints if node.spec and node.spec.taints else []
    return [(str(t.key), str(t.effect)) for t in taints]


def node_system_uuid(node: client.V1Node) -> str | None:
    info = node.status.node_info if node.status else None
    return str(info.system_uuid) if info and info.system_uuid else None


CRD_DIR = Path(__file__).resolve().parents[1] / "crds"


def apply_crds(api: client.ApiClient, paths: list[Path] | None = None, timeout: float = 30.0) -> list[str]:
    """Create or update the project's CRDs (``crds/*.yaml`` by default) and wait until each is
    Established. Returns their names."""
    import time

    import yaml
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in paths if paths is not None else sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            name = doc["metadata"]["name"]
            try:
                ext.create_custom_resource_definition(body(doc))
            except ApiException as exc:
                if exc.status != 409:
                    raise ConfigError(
                        f"CRD {name} from {path} was rejected: {api_error_message(exc)}"
                    ) from exc
                current = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = (
                    current.metadata.resource_version if current.metadata else None
                )
                ext.replace_custom_resource_definition(name, body(doc))
            names.append(name)
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            conditions = crd.status.conditions if crd.status and crd.status.conditions else []
            if any(c.type == "Established" and c.status == "True" for c in conditions):
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"CRD {name} not Established after {timeout:.0f}s")
            time.sleep(0.05)
    return names


def ensure_namespace(core: client.CoreV1Api, name: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        core.create_namespace(body({"metadata": {"name": name}}))
    except ApiException as exc:
        if exc.status != 409:
            raise


def create_or_replace_secret(
    core: client.CoreV1Api, namespace: str, name: str, data: dict[str, bytes]
) -> None:
    """A Secret with ``data`` (values are raw bytes; encoded here)."""
    import base64

    from kubernetes.client.exceptions import ApiException

    manifest = {
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    try:
        core.create_namespaced_secret(namespace, body(manifest))
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_secret(name, namespace, body(manifest))


# --- node isolation, release and events (used by the Fence controller) ---------------------------
# Added for the Fence controller. Every helper is idempotent: calling it again after a controller
# restart does no harm.

#: Retries of a read-modify-write on a conflict (someone else changed the object in between).
_CONFLICT_RETRIES = 8


def read_node_or_none(api: client.ApiClient, name: str) -> client.V1Node | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return client.CoreV1Api(api).read_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def node_boot_id(node: client.V1Node) -> str | None:
    info = node.status.node_info if node.status else None
    return str(info.boot_id) if info and info.boot_id else None


def node_condition_heartbeat(node: client.V1Node, condition_type: str) -> Any:
    """The lastHeartbeatTime (a datetime) of one node condition, or None."""
    conditions = node.status.conditions if node.status and node.status.conditions else []
    for condition in conditions:
        if condition.type == condition_type:
            return condition.last_heartbeat_time or condition.last_transition_time
    return None


def _update_node_spec(api: client.ApiClient, name: str, change: Any) -> client.V1Node | None:
    """Read the node, let ``change(spec_dict_view_of_node)`` return a spec patch (or None), apply it
    with the read resourceVersion as a precondition, retrying on conflict. None if the node is gone."""
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    for _ in range(_CONFLICT_RETRIES):
        node = read_node_or_none(api, name)
        if node is None:
            return None
        spec_patch = change(node)
        if spec_patch is None:
            return node
        version = node.metadata.resource_version if node.metadata else None
        patch = {"metadata": {"resourceVersion": version}, "spec": spec_patch}
        try:
            updated: client.V1Node = core.patch_node(name, body(patch))
            return updated
        except ApiException as exc:
            if exc.status == 409:
                continue
            if exc.status == 404:
                return None
            raise
    raise RuntimeError(f"node {name}: too many conflicting updates")


def _taint_dicts(node: client.V1Node) -> list[dict[str, Any]]:
    taints = node.spec.taints if node.spec and node.spec.taints else []
    out = []
    for t in taints:
        item: dict[str, Any] = {"key": t.key, "effect": t.effect}
        if t.value is not None:
            item["value"] = t.value
        if t.time_added is not None:
            item["timeAdded"] = t.time_added.isoformat().replace("+00:00", "Z")
        out.append(item)
    return out


def add_node_taints(api: client.ApiClient, name: str, taints: list[dict[str, str]]) -> bool:
    """Add taints (key, value, effect) that are not there yet. False when the node does not exist."""

    def change(node: client.V1Node) -> dict[str, Any] | None:
        current = _taint_dicts(node)
        have = {(t["key"], t["effect"]) for t in current}
        missing = [t for t in taints if (t["key"], t["effect"]) not in have]
        return {"taints": current + missing} if missing else None

    return _update_node_spec(api, name, change) is not None


def remove_node_taints(api: client.ApiClient, name: str, keys: set[str]) -> bool:
    """Remove every taint whose key is in ``keys``. False when the node does not exist."""

    def change(node: client.V1Node) -> dict[str, Any] | None:
        current = _taint_dicts(node)
        kept = [t for t in current if t["key"] not in keys]
        return {"taints": kept} if len(kept) != len(current) else None

    return _update_node_spec(api, name, change) is not None


def set_node_unschedulable(api: client.ApiClient, name: str, unschedulable: bool) -> bool | None:
    """Cordon (True) or uncordon (False). Returns the previous value, None when the node is gone."""
    before: dict[str, bool] = {}

    def change(node: client.V1Node) -> dict[str, Any] | None:
        was = bool(node.spec.unschedulable) if node.spec else False
        before.setdefault("value", was)
        return None if was == unschedulable else {"unschedulable": unschedulable}

    if _update_node_spec(api, name, change) is None:
        return None
    return before.get("value", False)


def node_pods(api: client.ApiClient, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}")
    return list(pods.items)


def force_delete_node_pods(api: client.ApiClient, name: str) -> int:
    """Delete every pod bound to the node with grace period 0 (no wait for a kubelet). Returns the count."""
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api)
    deleted = 0
    for pod in node_pods(api, name):
        if pod.metadata is None or not pod.metadata.name or not pod.metadata.namespace:
            continue
        try:
            core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                propagation_policy="Background",
            )
            deleted += 1
        except ApiException as exc:
            if exc.status != 404:
                raise
    return deleted


def node_volume_attachments(api: client.ApiClient, name: str) -> list[client.V1VolumeAttachment]:
    items = client.StorageV1Api(api).list_volume_attachment().items
    return [va for va in items if va.spec and va.spec.node_name == name]


def delete_node_volume_attachments(api: client.ApiClient, name: str) -> int:
    """Delete every VolumeAttachment of the node. Returns the count."""
    from kubernetes.client.exceptions import ApiException

    storage = client.StorageV1Api(api)
    deleted = 0
    for va in node_volume_attachments(api, name):
        if va.metadata is None or not va.metadata.name:
            continue
        try:
            storage.delete_volume_attachment(va.metadata.name)
            deleted += 1
        except ApiException as exc:
            if exc.status != 404:
                raise
    return deleted


def delete_node(api: client.ApiClient, name: str) -> bool:
    """Delete the Node object. False when it was already gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(api).delete_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def post_event(
    api: client.ApiClient,
    involved: dict[str, Any],
    event_type: str,
    reason: str,
    message: str,
    *,
    component: str = "remediator",
) -> None:
    """A core/v1 Event about ``involved`` (kind, name, apiVersion, uid[, namespace]).

    Events about cluster-scoped objects go to the ``default`` namespace, as kubelet's do for Nodes.
    """
    import datetime as dt
    import uuid

    namespace = involved.get("namespace") or "default"
    now = dt.datetime.now(dt.UTC)
    name = f"{involved['name']}.{uuid.uuid4().hex[:12]}"
    event = {
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": involved,
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
        "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
        "count": 1,
    }
    client.CoreV1Api(api).create_namespaced_event(namespace, body(event))


def node_lease_renew_time(api: client.ApiClient, name: str) -> Any:
    """When the node's kubelet last renewed its Lease (kube-node-lease/NAME), a datetime or None."""
    from kubernetes.client.exceptions import ApiException

    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(name, "kube-node-lease")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return lease.spec.renew_time if lease.spec else None
