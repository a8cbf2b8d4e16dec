"""Fixtures of the deploy checks: the pinned kubectl, kustomize and helm (built on first use, like
the control plane), the chart and kustomizations rendered once per session, and the RBAC objects
and admission policies really applied to the session's lab."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.lab.binaries import ensure_deploy_tools
from tests.integration.conftest import RunningLab

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "remediator"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
NAMESPACE = "remediator-system"
VMCORE_NAMESPACE = "vmcore-system"
#: Every optional feature of the chart switched on (ServiceMonitor needs the Prometheus Operator's CRDs).
ALL_FEATURES = ("machineAPI.enabled=true", "controller.leaseFastPath=true")
WORKLOAD_KINDS = ("Deployment", "DaemonSet", "Service", "PodDisruptionBudget", "ServiceMonitor")


@dataclass(frozen=True)
class Tools:
    kubectl: Path
    kustomize: Path
    helm: Path

    def run(self, tool: str, *args: str, kubeconfig: Path | None = None, stdin: str | None = None) -> str:
        env = dict(os.environ, KUBECONFIG=str(kubeconfig)) if kubeconfig else dict(os.environ)
        proc = subprocess.run(
            [str(getattr(self, tool)), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc.stdout + proc.stderr

    def helm_template(self, *values: str) -> str:
        args = ["template", "remediator", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
        for value in values:
            args += ["--set", value]
        return self.run("helm", *args)


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def to_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


@pytest.fixture(scope="session")
def tools() -> Tools:
    paths = ensure_deploy_tools()
    return Tools(paths["kubectl"], paths["kustomize"], paths["helm"])


@dataclass(frozen=True)
class Rendered:
    helm_default: list[dict[str, Any]]
    helm_all: list[dict[str, Any]]
    kustomize_base: list[dict[str, Any]]
    kustomize_dry_run: list[dict[str, Any]]
    kustomize_all: list[dict[str, Any]]


@pytest.fixture(scope="session")
def rendered(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Everything rendered once: the chart (defaults; every feature) and the kustomizations."""
    all_features = tmp_path_factory.mktemp("kustomize-all")
    # A user's own overlay: the base plus every component (kustomize wants relative paths).
    (all_features / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(KUSTOMIZE / "base", all_features)],
                "components": [
                    os.path.relpath(KUSTOMIZE / "components" / c, all_features)
                    for c in ("machine-api", "lease-fast-path")
                ],
            }
        )
    )
    return Rendered(
        helm_default=documents(tools.helm_template("createNamespace=true")),
        helm_all=documents(tools.helm_template("createNamespace=true", *ALL_FEATURES)),
        kustomize_base=documents(tools.run("kustomize", "build", str(KUSTOMIZE / "base"))),
        kustomize_dry_run=documents(tools.run("kustomize", "build", str(KUSTOMIZE / "overlays" / "dry-run"))),
        kustomize_all=documents(tools.run("kustomize", "build", str(all_features))),
    )


@pytest.fixture(scope="session")
def installed_rbac(lab: RunningLab, tools: Tools, rendered: Rendered) -> list[dict[str, Any]]:
    """The chart's namespaces, service accounts, RBAC and admission policies (every feature), applied
    for real to the lab. Workloads are left out: nothing here runs the images."""
    keep = [
        d
        for d in rendered.helm_all
        if d["kind"] not in (*WORKLOAD_KINDS, "CustomResourceDefinition")
        # the lab made remediator-system; its Pod Security labels are not this fixture's business
        and not (d["kind"] == "Namespace" and d["metadata"]["name"] == NAMESPACE)
    ]
    tools.run(
        "kubectl", "apply", "--server-side", "-f", "-", kubeconfig=lab.paths.kubeconfig, stdin=to_yaml(keep)
    )
    return keep
