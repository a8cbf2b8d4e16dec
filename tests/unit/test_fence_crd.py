"""The Fence CRD matches what the controller writes, and what the CLI and the controller expect of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator import workflow as wf
from remediator.controller_cli import fence_manifest
from remediator.fence_controller import competing_fences

CRD = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "fence.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        out += _walk(schema["items"], f"{path}[]")
    return out


def _unknown_keys(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        bad = [f"{path}.{k}" for k in value if k not in props]
        return bad + [
            x for k, v in value.items() if k in props for x in _unknown_keys(v, props[k], f"{path}.{k}")
        ]
    if isinstance(value, list):
        return [x for item in value for x in _unknown_keys(item, schema.get("items") or {}, f"{path}[]")]
    return []


def test_every_field_has_a_description() -> None:
    missing = [path for path, node in _walk(SCHEMA) if path and "description" not in node]
    assert not missing


def test_a_full_status_is_not_pruned() -> None:
    """Every key the state machine writes is in the schema (else the API server would drop it)."""
    state = wf.FenceState(
        phase=wf.Phase.RECOVERING,
        started=T0,
        completed=T0,
        target_uuid="u",
        target_boot_id="b",
        isolated=T0,
        off_verified=T0,
        off_level=0,
        on_verified=T0,
        released=T0,
        node_deleted=T0,
        restored=T0,
        in_flight=wf.InFlight(wf.Op.POWER_ON, 0, 1, T0, command_sent=T0),
        plan=("x",),
        phases=(wf.PhaseRecord(wf.Phase.PENDING, T0, T0),),
        attempts=(
            wf.Attempt(wf.Op.POWER_OFF, 0, "redfish", "d", 1, T0, 0.1, False, True, "BmcTimeout", "m"),
        ),
        conditions=(wf.Condition("Processing", "True", "R", "m", T0),),
    )
    status_schema = SCHEMA["properties"]["status"]
    assert not _unknown_keys(state.to_status(), status_schema)
    phases = set(status_schema["properties"]["phase"]["enum"])
    assert phases == {p.value for p in wf.Phase}


def test_spec_enums_and_defaults_match_the_state_machine() -> None:
    spec = SCHEMA["properties"]["spec"]["properties"]
    assert set(spec["action"]["enum"]) == {a.value for a in wf.Action}
    assert set(spec["afterFence"]["enum"]) == {a.value for a in wf.AfterFence}
    defaults = {k: v["default"] for k, v in spec.items() if "default" in v}
    parsed = wf.FenceSpec.from_dict({"nodeName": "n", **defaults})
    assert parsed == wf.FenceSpec("n", recovery_timeout_s=float(defaults["recoveryTimeoutSeconds"]))
    rules = [r["rule"] for r in SCHEMA["properties"]["spec"]["x-kubernetes-validations"]]
    assert "self == oldSelf" in rules and any("Reboot" in r and "Keep" in r for r in rules)


def test_printer_columns_and_subresource() -> None:
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns["Node"] == ".spec.nodeName" and columns["Phase"] == ".status.phase"
    assert {"Action", "After", "Age"} <= set(columns)
    assert VERSION["subresources"] == {"status": {}}
    assert CRD["spec"]["scope"] == "Cluster" and CRD["spec"]["group"] == "remediator.io"


@pytest.mark.parametrize(
    ("action", "after", "expected"),
    [
        ("off", None, ("Off", "Keep")),
        ("reboot", None, ("Reboot", "PowerOn")),
        ("off", "remove", ("Off", "Remove")),
    ],
)
def test_cli_manifest(action: str, after: str | None, expected: tuple[str, str]) -> None:
    spec = fence_manifest("lab-host-2", action, after, "why", False)["spec"]
    assert (spec["action"], spec["afterFence"]) == expected and spec["nodeName"] == "lab-host-2"


def _fence(
    name: str, node: str, created: str, phase: str | None = None, deleting: bool = False
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if deleting:
        meta["deletionTimestamp"] = created
    return {"metadata": meta, "spec": {"nodeName": node}, "status": {"phase": phase} if phase else {}}


@pytest.mark.parametrize(
    ("other", "competes"),
    [
        (_fence("b", "n", "2026-01-01T00:00:05Z", "PoweringOff"), True),  # past Pending: always wins
        (_fence("b", "n", "2026-01-01T00:00:00Z"), True),  # older Pending one wins
        (_fence("b", "n", "2026-01-01T00:00:09Z"), False),  # younger Pending one does not
        (_fence("a0", "n", "2026-01-01T00:00:01Z"), True),  # same second: the name decides
        (_fence("b", "n", "2026-01-01T00:00:00Z", "Failed"), False),  # finished
        (_fence("b", "n", "2026-01-01T00:00:00Z", "Isolating", deleting=True), False),
        (_fence("b", "other", "2026-01-01T00:00:00Z", "PoweringOff"), False),  # another node
    ],
)
def test_competing_fences(other: dict[str, Any], competes: bool) -> None:
    me = _fence("a1", "n", "2026-01-01T00:00:01Z")
    assert bool(competing_fences(me, [me, other])) is competes
