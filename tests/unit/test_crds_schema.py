"""The CRDs themselves: every field described (``kubectl explain`` helps everywhere), status
subresources and printer columns present, and the copies under deploy/ identical to crds/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
COPIES = (ROOT / "deploy" / "helm" / "remediator" / "crds", ROOT / "deploy" / "kustomize" / "crds")


def load_crds() -> dict[str, dict[str, Any]]:
    """name -> CRD, for every CustomResourceDefinition under crds/."""
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                crds[doc["metadata"]["name"]] = doc
    return crds


CRDS = load_crds()


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, sub-schema) below ``schema``: properties, array items, map values."""
    for name, sub in (schema.get("properties") or {}).items():
        yield f"{path}.{name}", sub
        yield from walk(sub, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict):
        yield f"{path}[]", items
        yield from walk(items, f"{path}[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield f"{path}{{}}", extra
        yield from walk(extra, f"{path}{{}}")


def test_there_are_crds_for_every_kind() -> None:
    kinds = {crd["spec"]["names"]["kind"] for crd in CRDS.values()}
    assert kinds >= {"Fence", "NodeFencing", "NodeHealthCheck", "VirtualMachine", "VirtualMachineMigration"}


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_field_has_a_description(name: str) -> None:
    crd = CRDS[name]
    missing = []
    for version in crd["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        if not root.get("description"):
            missing.append(f"{version['name']}: (the object)")
        for path, sub in walk(root, ""):
            if path == ".metadata":
                continue  # the API server describes ObjectMeta itself
            # `kubectl explain` shows a list's or map's own description for its items and values.
            if path.endswith(("{}", "[]")):
                continue
            if not str(sub.get("description", "")).strip():
                missing.append(f"{version['name']}: {path.lstrip('.')}")
    assert not missing, f"{name}: fields without a description: {', '.join(missing)}"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_status_subresource_and_printer_columns(name: str) -> None:
    for version in CRDS[name]["spec"]["versions"]:
        assert "status" in (version.get("subresources") or {}), f"{name} {version['name']}: no status"
        columns = version.get("additionalPrinterColumns") or []
        assert columns, f"{name} {version['name']}: no printer columns"
        for column in columns:
            if column["jsonPath"] != ".metadata.creationTimestamp":
                assert column.get("description"), f"{name}: printer column {column['name']} undescribed"


@pytest.mark.parametrize("name", sorted(CRDS))
def test_every_array_and_string_is_bounded_or_in_status(name: str) -> None:
    """Spec strings and arrays users write carry a bound (length, items, enum or pattern)."""
    unbounded = []
    for version in CRDS[name]["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"].get("spec") or {}
        for path, sub in walk(spec, "spec"):
            kind = sub.get("type")
            bounded = any(k in sub for k in ("maxLength", "enum", "pattern", "maxItems", "format"))
            if kind in ("string", "array") and not bounded:
                unbounded.append(path)
    # Known unbounded fields, each bounded by something else (say why when adding one).
    allowed = {
        # label keys and values: the API server's own label rules bound them on the nodes matched
        "spec.selector.matchExpressions",
        "spec.selector.matchExpressions[].key",
        "spec.selector.matchExpressions[].values",
        "spec.selector.matchExpressions[].values[]",
        "spec.selector.matchLabels{}",
        "spec.nodeSelector{}",
        # node condition types: matched against the nodes' own conditions, never stored elsewhere
        "spec.unhealthyConditions",
        "spec.unhealthyConditions[].type",
        # copied into a Pod, whose validation bounds them
        "spec.tolerations[].key",
        "spec.tolerations[].value",
    }
    assert not [p for p in unbounded if p not in allowed], f"{name}: unbounded spec fields {unbounded}"


@pytest.mark.parametrize("copies", COPIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_deploy_copies_match_crds(copies: Path) -> None:
    """deploy/ ships the CRDs as copies (kustomize and Helm cannot reach crds/); run deploy/sync.sh."""
    source = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    copied = {p.name: p.read_text() for p in copies.glob("*.yaml") if p.name != "kustomization.yaml"}
    stale = sorted(n for n in source.keys() | copied.keys() if source.get(n) != copied.get(n))
    assert not stale, f"{copies} is out of step with crds/ ({', '.join(stale)}): run deploy/sync.sh"


SCHEMA_KEYS = {
    "type", "description", "properties", "items", "additionalProperties", "required", "enum", "default",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength", "maxLength",
    "pattern", "format", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
    "nullable", "title", "example", "oneOf", "anyOf", "allOf", "not",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CRDS))
def test_schemas_use_only_openapi_keys(name: str) -> None:
    """A stray key is a YAML slip (a comma inside a flow mapping splits a description in two); the
    API server drops it silently and the description is cut short."""
    stray = []
    for version in CRDS[name]["spec"]["versions"]:
        root = version["schema"]["openAPIV3Schema"]
        for path, sub in [("", root), *walk(root, "")]:
            stray += [
                f"{path}: {k!r}" for k in sub if k not in SCHEMA_KEYS and not k.startswith("x-kubernetes-")
            ]
    assert not stray, f"{name}: keys that are no OpenAPI schema keywords: {', '.join(stray)}"
