"""Server-side dry runs of everything a cluster admin applies (crds/, the kustomize base and overlay,
the Helm chart), against the lab's real API server, and the promises of the manifests themselves:
kustomize and Helm install the same objects, and each workload has the placement and security
context it documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from remediator import kube
from tests.integration.conftest import RunningLab
from tests.integration.deploy.conftest import (
    KUSTOMIZE,
    NAMESPACE,
    ROOT,
    VMCORE_NAMESPACE,
    Rendered,
    Tools,
    documents,
    to_yaml,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def namespaces(lab: RunningLab) -> None:
    """Namespaced objects are dry-run into namespaces that must exist: create them for real."""
    for name in (NAMESPACE, VMCORE_NAMESPACE):
        kube.ensure_namespace(lab.core, name)


def dry_run(tools: Tools, lab: RunningLab, docs: list[dict[str, Any]]) -> str:
    out = tools.run(
        "kubectl",
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=remediator-deploy-check",
        "--force-conflicts",  # the lab created some of these objects with another client
        "-f",
        "-",
        kubeconfig=lab.paths.kubeconfig,
        stdin=to_yaml(docs),
    )
    applied = [line for line in out.splitlines() if "serverside-applied (server dry run)" in line]
    assert len(applied) == len(docs), out
    # Pod Security (restricted in remediator-system) and deprecations answer with warnings.
    assert "Warning" not in out, out
    return out


def test_dry_run_crds(tools: Tools, lab: RunningLab) -> None:
    docs = [d for p in sorted((ROOT / "crds").glob("*.yaml")) for d in documents(p.read_text())]
    dry_run(tools, lab, docs)


def test_dry_run_kustomize_base(tools: Tools, lab: RunningLab, rendered: Rendered, namespaces: None) -> None:
    dry_run(tools, lab, rendered.kustomize_base)


def test_dry_run_kustomize_overlay_and_components(
    tools: Tools, lab: RunningLab, rendered: Rendered, namespaces: None
) -> None:
    dry_run(tools, lab, rendered.kustomize_dry_run)
    dry_run(tools, lab, rendered.kustomize_all)
    args = _container(rendered.kustomize_dry_run, "Deployment", "remediator-controller")["args"]
    assert "--dry-run" in args


def test_dry_run_helm_chart(tools: Tools, lab: RunningLab, rendered: Rendered, namespaces: None) -> None:
    dry_run(tools, lab, rendered.helm_default)
    dry_run(tools, lab, rendered.helm_all)


def test_helm_service_monitor_behind_a_value(tools: Tools) -> None:
    kinds = {d["kind"] for d in documents(tools.helm_template())}
    assert "ServiceMonitor" not in kinds
    monitor = [
        d
        for d in documents(tools.helm_template("serviceMonitor.enabled=true"))
        if d["kind"] == "ServiceMonitor"
    ]
    assert len(monitor) == 1
    assert monitor[0]["spec"]["endpoints"][0]["port"] == "metrics"


def _key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


HELM_ONLY_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart")


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    """A rendered object without the labels only Helm adds (wherever labels appear)."""
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items() if k not in HELM_ONLY_LABELS}
    if isinstance(doc, list):
        return [_plain(v) for v in doc]
    return doc


def test_kustomize_and_helm_install_the_same_objects(rendered: Rendered) -> None:
    """deploy/kustomize is generated from the chart (deploy/sync.sh); stale output fails here."""
    for helm, kustomize in (
        (rendered.helm_default, rendered.kustomize_base),
        (rendered.helm_all, rendered.kustomize_all),
    ):
        by_key = {_key(d): _plain(d) for d in helm}
        other = {_key(d): d for d in kustomize}
        assert by_key.keys() == other.keys()
        stale = [k for k in by_key if by_key[k] != other[k]]
        assert not stale, f"deploy/kustomize differs from the chart for {stale}: run deploy/sync.sh"


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    container: dict[str, Any] = _find(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]
    return container


def test_controller_placement_and_security(rendered: Rendered) -> None:
    docs = rendered.helm_default
    deployment = _find(docs, "Deployment", "remediator-controller")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert {p["preference"]["matchExpressions"][0]["key"] for p in preferred} == {
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/infra",
    }
    container = pod["containers"][0]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["NODE_NAME"] == "spec.nodeName" and env["POD_NAME"] == "metadata.name"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"]
    assert not security["allowPrivilegeEscalation"] and security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"]
    assert any(p["name"] == "metrics" for p in container["ports"])
    pdb = _find(docs, "PodDisruptionBudget", "remediator-controller")
    assert pdb["spec"]["minAvailable"] == 1
    namespace = _find(docs, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_handler_is_the_only_privileged_workload(rendered: Rendered) -> None:
    privileged = []
    for doc in rendered.helm_all:
        if doc["kind"] not in ("Deployment", "DaemonSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for container in pod["containers"]:
            if container["securityContext"].get("privileged"):
                privileged.append(doc["metadata"]["name"])
        if doc["kind"] == "Deployment":
            assert not [v for v in pod.get("volumes", []) if "hostPath" in v], doc["metadata"]["name"]
    assert privileged == ["vmcore-handler"]
    handler = _find(rendered.helm_all, "DaemonSet", "vmcore-handler")["spec"]["template"]["spec"]
    host_paths = sorted(v["hostPath"]["path"] for v in handler["volumes"] if "hostPath" in v)
    assert host_paths == ["/run/libvirt", "/var/lib/vmcore"]
    assert handler["serviceAccountName"] == "vmcore-handler"


def test_committed_kustomize_base_is_the_chart(tools: Tools) -> None:
    """deploy/kustomize/base/remediator.yaml is the chart rendered with its defaults."""
    committed = documents((KUSTOMIZE / "base" / "remediator.yaml").read_text())
    fresh = documents(
        tools.run(
            "helm",
            "template",
            "remediator",
            str(Path(KUSTOMIZE).parent / "helm" / "remediator"),
            "--namespace",
            NAMESPACE,
            "--set",
            "createNamespace=true",
            "--set",
            "plainManifests=true",
        )
    )
    assert committed == fresh, "deploy/kustomize/base/remediator.yaml is stale: run deploy/sync.sh"
