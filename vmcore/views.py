"""Raw API objects (plain dicts, as kopf and ``sanitize_for_serialization`` give them) -> decision views.

Pure: the controller and the handler both build the views of :mod:`vmcore.decisions` through here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vmcore.api import (
    ANN_MIGRATE,
    ANN_MIGRATION_STATE,
    ANN_REQUESTED_STATE,
    ANN_TARGET_URI,
    LABEL_MIGRATION,
    LABEL_ROLE,
    ROLE_LAUNCHER,
    parse_migrate_request,
    parse_migration_report,
    parse_time,
    parse_vm_spec,
    parse_vm_status,
)
from vmcore.decisions import MigrationView, NodeView, PodView, VmView
from vmcore.errors import VmSpecError


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _json(value: object) -> Mapping[str, Any]:
    if not isinstance(value, str) or not value:
        return {}
    try:
        loaded = json.loads(value)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, Mapping) else {}


def pod_view(pod: Mapping[str, Any]) -> PodView:
    meta, spec, status = _dict(pod.get("metadata")), _dict(pod.get("spec")), _dict(pod.get("status"))
    labels, annotations = _dict(meta.get("labels")), _dict(meta.get("annotations"))
    unschedulable = ""
    for item in status.get("conditions") or []:
        cond = _dict(item)
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and (cond.get("reason") == "Unschedulable")
        ):
            unschedulable = str(cond.get("message") or "unschedulable")
    request = _json(annotations.get(ANN_MIGRATE))
    report = _json(annotations.get(ANN_MIGRATION_STATE))
    return PodView(
        name=str(meta.get("name", "")),
        role=str(labels.get(LABEL_ROLE, ROLE_LAUNCHER)),
        node=str(spec.get("nodeName") or ""),
        deleting=bool(meta.get("deletionTimestamp")) or status.get("phase") in ("Succeeded", "Failed"),
        migration=str(labels.get(LABEL_MIGRATION, "")),
        unschedulable=unschedulable,
        target_uri=str(annotations.get(ANN_TARGET_URI, "")),
        migrate_request=parse_migrate_request(request).migration if request else "",
        report=parse_migration_report(report) if report else None,
        created=parse_time(meta.get("creationTimestamp")),
    )


def node_view(node: Mapping[str, Any]) -> NodeView:
    meta, spec, status = _dict(node.get("metadata")), _dict(node.get("spec")), _dict(node.get("status"))
    ready = ""
    for item in status.get("conditions") or []:
        cond = _dict(item)
        if cond.get("type") == "Ready":
            ready = str(cond.get("status", "Unknown"))
    return NodeView(
        name=str(meta.get("name", "")),
        ready=ready or "Unknown",
        unschedulable=bool(spec.get("unschedulable")),
    )


def migration_view(mig: Mapping[str, Any]) -> MigrationView:
    meta, spec, status = _dict(mig.get("metadata")), _dict(mig.get("spec")), _dict(mig.get("status"))
    return MigrationView(
        name=str(meta.get("name", "")),
        vm_name=str(spec.get("vmName", "")),
        target_node=str(spec.get("targetNode") or ""),
        timeout_seconds=int(spec.get("completionTimeoutSeconds", 60)),
        bandwidth_mibps=int(spec.get("bandwidthMiBps", 0)),
        phase=str(status.get("phase", "")),
        created=parse_time(meta.get("creationTimestamp")),
        source_node=str(status.get("sourceNode", "")),
        target_pod=str(status.get("targetPod", "")),
        started_at=parse_time(status.get("startedAt")),
        ended_at=parse_time(status.get("endedAt")),
    )


def vm_view(vm: Mapping[str, Any]) -> VmView:
    meta = _dict(vm.get("metadata"))
    annotations = _dict(meta.get("annotations"))
    error = ""
    try:
        spec = parse_vm_spec(_dict(vm.get("spec")))
    except (VmSpecError, ValueError, TypeError) as exc:
        spec, error = None, str(exc)
    return VmView(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
        spec=spec,
        status=parse_vm_status(_dict(vm.get("status"))),
        requested_state=str(annotations.get(ANN_REQUESTED_STATE, "")),
        spec_error=error,
    )
