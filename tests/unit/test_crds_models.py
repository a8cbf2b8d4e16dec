"""The code never disagrees with the CRDs: every field the models read exists in the schema, every
object they write validates against it, and enums, defaults and bounds are the same on both sides.

Reads are recorded by handing the parsers a dict that notes each key looked up; writes are checked
by a small validator of the OpenAPI subset the CRDs use (types, enums, formats, bounds, patterns).
``EXAMPLES`` (one complete, valid object per kind) are reused by the integration checks.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from remediator import health, nodefencing
from remediator import workflow as wf
from remediator.errors import ConfigError
from tests.unit.test_crds_schema import CRDS

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

EXAMPLES: dict[str, dict[str, Any]] = {
    "Fence": {
        "apiVersion": "remediator.io/v1alpha1",
        "kind": "Fence",
        "metadata": {"name": "example-fence"},
        "spec": {
            "nodeName": "worker-1",
            "action": "Reboot",
            "afterFence": "PowerOn",
            "reason": "example",
            "dryRun": True,
            "recoveryTimeoutSeconds": 300,
        },
    },
    "NodeFencing": {
        "apiVersion": "remediator.io/v1alpha1",
        "kind": "NodeFencing",
        "metadata": {"name": "worker-1"},
        "spec": {
            "levels": [
                {
                    "type": "redfish",
                    "address": "redfish+https://10.0.0.1/redfish/v1/Systems/1",
                    "credentialsSecret": "bmc-worker-1",
                    "insecureSkipVerify": False,
                    "redfishAuth": "session",
                    "callTimeoutSeconds": 5,
                    "powerTimeoutSeconds": 60,
                    "attempts": 3,
                },
                {
                    "type": "ipmi",
                    "address": "ipmi://10.0.0.1:623",
                    "credentialsSecret": "bmc-worker-1",
                    "ipmiLegacySHA1": True,
                },
                {"type": "machineAPI", "machineNamespace": "capi", "machineName": "worker-1-abcde"},
            ]
        },
    },
    "NodeHealthCheck": {
        "apiVersion": "remediator.io/v1alpha1",
        "kind": "NodeHealthCheck",
        "metadata": {"name": "workers"},
        "spec": {
            "selector": {
                "matchLabels": {"node-role.kubernetes.io/worker": ""},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
            },
            "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "duration": "40s"}],
            "minHealthy": "51%",
            "fenceTemplate": {"action": "Off", "afterFence": "PowerOn"},
            "escalationTimeout": "10m",
            "pause": False,
            "stormCooldown": "1m",
            "healthyDelay": "30s",
            "leaseStaleAfter": "20s",
        },
    },
    "VirtualMachine": {
        "apiVersion": "vmcore.remediator.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm-1"},
        "spec": {
            "cpu": {"cores": 2},
            "memory": {"guest": "256Mi"},
            "disks": [
                {
                    "name": "root",
                    "image": {"path": "/var/lib/images/root.qcow2", "shared": True, "format": "qcow2"},
                },
                {"name": "scratch", "ephemeral": {"sizeMiB": 64}},
            ],
            "interfaces": [{"name": "eth0", "network": "pod", "binding": "masquerade", "model": "virtio"}],
            "runStrategy": "Always",
            "evictionStrategy": "LiveMigrate",
            "priority": 10,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
            ],
        },
    },
    "VirtualMachineMigration": {
        "apiVersion": "vmcore.remediator.io/v1alpha1",
        "kind": "VirtualMachineMigration",
        "metadata": {"name": "move-vm-1"},
        "spec": {
            "vmName": "vm-1",
            "targetNode": "worker-2",
            "completionTimeoutSeconds": 30,
            "bandwidthMiBps": 0,
        },
    },
}


def schema_of(kind: str) -> dict[str, Any]:
    crd = next(c for c in CRDS.values() if c["spec"]["names"]["kind"] == kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def sub_schema(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any] | None:
    """The schema at ``path`` (property names, "[]" for items, "{}" for map values), None if absent."""
    node: dict[str, Any] | None = schema
    for part in path:
        if node is None:
            return None
        if part == "[]":
            node = node.get("items")
        elif part == "{}":
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else None
        else:
            node = (node.get("properties") or {}).get(part)
    return node


# --- writes: validate a value against a schema ---------------------------------------------------


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, int | str) and not isinstance(value, bool)
    checks: dict[str, Any] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list | tuple),
        "object": lambda v: isinstance(v, dict),
    }
    return bool(checks.get(str(kind), lambda _v: True)(value))


def _scalar_violations(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    out = []
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in enum {schema['enum']}")
    if isinstance(value, str):
        if schema.get("format") == "date-time":
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                out.append(f"{path}: {value!r} is not a date-time")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(f"{path}: longer than {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} < minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} > maximum {schema['maximum']}")
    return out


def violations(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """What is wrong with ``value`` under ``schema``. None is fine: it deletes the field in a merge patch."""
    if value is None:
        return []
    if not _type_ok(value, schema):
        return [f"{path or '.'}: {value!r} is not of type {schema.get('type')}"]
    out = _scalar_violations(value, schema, path)
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            out += violations(item, schema.get("items") or {}, f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                out += violations(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += violations(item, extra, f"{path}.{key}")
            elif not schema.get("x-kubernetes-preserve-unknown-fields") and (props or extra is not None):
                out.append(f"{path}.{key}: not in the schema (the API server would prune it)")
    return out


# --- reads: record every key a parser looks up ---------------------------------------------------


class Recorder(dict):  # type: ignore[type-arg]
    """A dict that records the path of every key looked up in it (and in dicts and lists inside)."""

    def __init__(self, data: dict[str, Any], seen: set[tuple[str, ...]], path: tuple[str, ...] = ()) -> None:
        super().__init__(data)
        self.seen = seen
        self.path = path

    def _wrap(self, key: str, value: Any) -> Any:
        path = (*self.path, key)
        if isinstance(value, dict):
            return Recorder(value, self.seen, path)
        if isinstance(value, list):
            return [Recorder(v, self.seen, (*path, "[]")) if isinstance(v, dict) else v for v in value]
        return value

    def _note(self, key: object) -> None:
        self.seen.add((*self.path, str(key)))

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return self._wrap(key, super().get(key, default))

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return self._wrap(key, super().__getitem__(key))

    def __contains__(self, key: object) -> bool:
        self._note(key)
        return super().__contains__(key)


def unknown_reads(
    seen: set[tuple[str, ...]], schema: dict[str, Any], maps: tuple[str, ...] = ()
) -> list[str]:
    """Recorded paths that the schema does not have. ``maps``: paths whose keys are data (map values)."""
    missing = []
    for path in sorted(seen):
        normal: list[str] = []
        for part in path:
            normal.append("{}" if "/".join(normal) in maps else part)
        if sub_schema(schema, tuple(normal)) is None:
            missing.append(".".join(path))
    return missing


def enum_of(kind: str, *path: str) -> set[str]:
    node = sub_schema(schema_of(kind), path)
    assert node is not None and "enum" in node, f"{kind} {'.'.join(path)} has no enum"
    return set(node["enum"])


def default_of(kind: str, *path: str) -> Any:
    node = sub_schema(schema_of(kind), path)
    assert node is not None and "default" in node, f"{kind} {'.'.join(path)} has no default"
    return node["default"]


def test_examples_are_valid() -> None:
    for kind, obj in EXAMPLES.items():
        schema = schema_of(kind)
        spec = schema["properties"]["spec"]
        assert not violations(obj["spec"], spec, "spec"), kind


# --- Fence ----------------------------------------------------------------------------------------


def test_fence_spec_reads_only_schema_fields() -> None:
    seen: set[tuple[str, ...]] = set()
    wf.FenceSpec.from_dict(Recorder(EXAMPLES["Fence"]["spec"], seen, ("spec",)))
    assert seen and not unknown_reads(seen, schema_of("Fence"))


def test_fence_enums_and_defaults_match() -> None:
    assert enum_of("Fence", "spec", "action") == {a.value for a in wf.Action}
    assert enum_of("Fence", "spec", "afterFence") == {a.value for a in wf.AfterFence}
    assert enum_of("Fence", "status", "phase") == {p.value for p in wf.Phase}
    spec = wf.FenceSpec.from_dict({"nodeName": "n"})
    assert spec.action.value == default_of("Fence", "spec", "action")
    assert spec.after.value == default_of("Fence", "spec", "afterFence")
    assert spec.recovery_timeout_s == default_of("Fence", "spec", "recoveryTimeoutSeconds")
    assert spec.dry_run == default_of("Fence", "spec", "dryRun")


def rich_fence_state() -> wf.FenceState:
    """A state that went through isolation, a failed and a successful attempt, release and restore."""
    spec = wf.FenceSpec("worker-1", wf.Action.REBOOT, wf.AfterFence.POWER_ON)
    level = wf.LevelInfo(0, "redfish", "level 1 redfish https://bmc", 2)
    state = wf.begin(wf.FenceState(), spec, NOW, 3, False)
    state = wf.transition(state, wf.Transition(wf.Phase.ISOLATING, "Isolating", "cordon"), NOW)
    state = wf.record_isolated(state, False, NOW)
    state = wf.transition(state, wf.Transition(wf.Phase.POWERING_OFF, "PoweringOff", "off"), NOW)
    for attempt, ok in ((1, False), (2, True)):
        command = wf.Command(wf.Op.POWER_OFF, level=0, attempt=attempt)
        state = wf.begin_power(state, command, NOW)
        state = wf.command_sent(state, NOW)
        outcome = wf.PowerOutcome(
            wf.Op.POWER_OFF, level, "redfish https://bmc", attempt, NOW, 0.25, ok, True,
            None if ok else "BmcTimeout", "read back" if ok else "no answer",
        )  # fmt: skip
        state = wf.record_power(state, outcome, NOW + timedelta(seconds=attempt))
    state = wf.transition(state, wf.Transition(wf.Phase.RELEASING, "Releasing", "release"), NOW)
    state = wf.record_released(state, 4, 1, NOW)
    state = wf.record_restored(state, NOW)
    state = wf.record_wait(state, 1.5)
    return wf.transition(state, wf.Transition(wf.Phase.SUCCEEDED, "Succeeded", "done"), NOW)


def test_fence_status_written_matches_schema() -> None:
    status = rich_fence_state().to_status()
    assert status["attempts"] and status["phases"] and status["conditions"]
    assert not violations(status, schema_of("Fence")["properties"]["status"], "status")


def test_fence_status_reads_only_schema_fields() -> None:
    seen: set[tuple[str, ...]] = set()
    status = rich_fence_state().to_status()
    status["inFlight"] = {
        "operation": "PowerOff",
        "level": 0,
        "attempt": 1,
        "startedAt": "2026-01-01T00:00:00Z",
    }
    wf.FenceState.from_status(Recorder(status, seen, ("status",)))
    assert len(seen) > 20 and not unknown_reads(seen, schema_of("Fence"))


def test_fence_cli_manifest_matches_schema() -> None:
    from remediator.controller_cli import fence_manifest

    spec = fence_manifest("worker-1", "reboot", "power-on", "why", True)["spec"]
    assert not violations(spec, schema_of("Fence")["properties"]["spec"], "spec")


# --- NodeFencing ----------------------------------------------------------------------------------


def test_nodefencing_reads_only_schema_fields() -> None:
    seen: set[tuple[str, ...]] = set()
    nodefencing.parse_node_fencing(Recorder(EXAMPLES["NodeFencing"], seen))
    reads = {p for p in seen if p[0] == "spec"}
    assert ("spec", "levels", "[]", "callTimeoutSeconds") in reads
    assert not unknown_reads(reads, schema_of("NodeFencing"))


def test_nodefencing_enums_defaults_and_bounds_match() -> None:
    assert enum_of("NodeFencing", "spec", "levels", "[]", "type") == set(nodefencing.LEVEL_TYPES)
    level = {"type": "redfish", "address": "redfish://bmc/redfish/v1/Systems/1", "credentialsSecret": "s"}
    for auth in enum_of("NodeFencing", "spec", "levels", "[]", "redfishAuth"):
        assert nodefencing.parse_level(0, {**level, "redfishAuth": auth}, "n").redfish_auth == auth
    parsed = nodefencing.parse_level(0, level, "n")
    item = ("spec", "levels", "[]")
    assert parsed.redfish_auth == default_of("NodeFencing", *item, "redfishAuth")
    assert parsed.insecure == default_of("NodeFencing", *item, "insecureSkipVerify")
    assert parsed.call_timeout_s == default_of("NodeFencing", *item, "callTimeoutSeconds")
    assert parsed.power_timeout_s == default_of("NodeFencing", *item, "powerTimeoutSeconds")
    assert parsed.attempts == default_of("NodeFencing", *item, "attempts")
    for key in ("callTimeoutSeconds", "powerTimeoutSeconds", "attempts"):
        node = sub_schema(schema_of("NodeFencing"), (*item, key))
        assert node is not None
        low, high = node["minimum"], node["maximum"]
        nodefencing.parse_level(0, {**level, key: low}, "n")
        nodefencing.parse_level(0, {**level, key: high}, "n")
        step = 1 if node["type"] == "integer" else 0.01
        for bad in (low - step, high + step):
            with pytest.raises(ConfigError):
                nodefencing.parse_level(0, {**level, key: bad}, "n")


# --- NodeHealthCheck ------------------------------------------------------------------------------


def test_nodehealthcheck_policy_reads_only_schema_fields() -> None:
    seen: set[tuple[str, ...]] = set()
    health.parse_policy("workers", Recorder(EXAMPLES["NodeHealthCheck"]["spec"], seen, ("spec",)))
    assert ("spec", "leaseStaleAfter") in seen
    assert not unknown_reads(seen, schema_of("NodeHealthCheck"), maps=("spec/selector/matchLabels",))


def test_nodehealthcheck_defaults_match() -> None:
    policy = health.parse_policy("p", {})
    assert policy.escalation_timeout == health.parse_duration(
        default_of("NodeHealthCheck", "spec", "escalationTimeout")
    )
    assert policy.storm_cooldown == health.parse_duration(
        default_of("NodeHealthCheck", "spec", "stormCooldown")
    )
    assert policy.healthy_delay == health.parse_duration(
        default_of("NodeHealthCheck", "spec", "healthyDelay")
    )
    assert policy.pause == default_of("NodeHealthCheck", "spec", "pause")
    defaults = default_of("NodeHealthCheck", "spec", "unhealthyConditions")
    assert [(c["type"], c["status"], health.parse_duration(c["duration"])) for c in defaults] == [
        (c.type, c.status, c.duration) for c in health.DEFAULT_UNHEALTHY_CONDITIONS
    ]
    assert enum_of("NodeHealthCheck", "status", "remediations", "[]", "outcome") == {
        o.value for o in health.FenceOutcome
    }


def test_nodehealthcheck_status_written_matches_schema() -> None:
    from remediator import health_controller as hc

    memory = health.Memory(
        storm_active=True,
        storm_ended_at=NOW,
        remediations={
            "w1": health.Remediation("w1", "w1-abcde", NOW, health.FenceOutcome.SUCCEEDED, NOW, True),
            "w2": health.Remediation("w2", "w2-fghij", NOW),
        },
    )
    status = hc._status_base(4, NOW)
    status.update(health.memory_to_status(memory))
    status["conditions"] = [hc._condition("StormActive", "True", "TooManyUnhealthy", "x", 4, NOW)]
    status.update(observedNodes=3, healthyNodes=1, unhealthyNodes=2)
    status["unhealthy"] = [{"node": "w1", "since": hc._fmt(NOW), "signals": ["Ready=Unknown"], "fence": None}]
    assert not violations(status, schema_of("NodeHealthCheck")["properties"]["status"], "status")
    seen: set[tuple[str, ...]] = set()
    health.memory_from_status(Recorder(status, seen, ("status",)))
    assert not unknown_reads(seen, schema_of("NodeHealthCheck"))


# --- vmcore ---------------------------------------------------------------------------------------


def test_vm_spec_round_trip_matches_schema() -> None:
    from vmcore import api as vapi

    seen: set[tuple[str, ...]] = set()
    spec = vapi.parse_vm_spec(Recorder(EXAMPLES["VirtualMachine"]["spec"], seen, ("spec",)))
    assert not unknown_reads(seen, schema_of("VirtualMachine"), maps=("spec/nodeSelector",))
    assert not violations(spec.to_json(), schema_of("VirtualMachine")["properties"]["spec"], "spec")
    assert enum_of("VirtualMachine", "spec", "runStrategy") == set(vapi.RUN_STRATEGIES)
    assert enum_of("VirtualMachine", "spec", "evictionStrategy") == set(vapi.EVICTION_STRATEGIES)


def test_vm_status_written_and_read_match_schema() -> None:
    from vmcore import api as vapi
    from vmcore.controller import status_json

    raw = {
        "phase": "Running",
        "nodeName": "w1",
        "activePod": "virt-launcher-vm-1-abc",
        "domains": {"w1": vapi.DomainEntry("virt-launcher-vm-1-abc", vapi.DOMAIN_RUNNING, NOW).to_json(NOW)},
        "activeMigration": {"name": "m", "targetPod": "virt-launcher-vm-1-def", "sourceNode": "w1"},
        "lastExit": {"reason": "Crashed", "node": "w0", "at": "2026-01-01T00:00:00Z"},
        "restarts": 1,
        "conditions": [vapi.Condition("Ready", "True", "Running", "", NOW).to_json(2)],
    }
    schema = schema_of("VirtualMachine")
    assert not violations(raw, schema["properties"]["status"], "status")
    seen: set[tuple[str, ...]] = set()
    status = vapi.parse_vm_status(Recorder(raw, seen, ("status",)))
    assert not unknown_reads(seen, schema, maps=("status/domains",))
    written = status_json(status, 2)
    assert written["activeMigration"] and written["lastExit"]
    assert not violations(written, schema["properties"]["status"], "status")
    assert written["phase"] in enum_of("VirtualMachine", "status", "phase")


def test_vm_migration_reads_only_schema_fields() -> None:
    from vmcore.views import migration_view

    seen: set[tuple[str, ...]] = set()
    obj = {**EXAMPLES["VirtualMachineMigration"], "status": {"phase": "Running", "sourceNode": "w1"}}
    migration_view(Recorder(obj, seen))
    reads = {p for p in seen if p[0] in ("spec", "status")}
    assert ("spec", "vmName") in reads
    assert not unknown_reads(reads, schema_of("VirtualMachineMigration"))
