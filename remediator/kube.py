"""Thin wrappers over the Kubernetes API client, shared by the controller, the CLI and the lab.

The generated client types every field as optional; the helpers here read the few fields we need
from Node objects without sprinkling ``None`` checks everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client, config


def api_client(kubeconfig: Path | None = None) -> client.ApiClient:
    """An API client from a kubeconfig file, or from the in-cluster service account when None."""
    if kubeconfig is None:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return client.ApiClient()
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


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
