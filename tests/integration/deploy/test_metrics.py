"""The controller's Prometheus endpoint serves the documented series: ``remediator run`` against the
lab with a metrics port on 127.0.0.1, a NodeHealthCheck created, /metrics read until the policy's
series appear (with a deadline)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from remediator import kube, metrics
from tests.integration.conftest import RunningLab
from tests.integration.deploy.conftest import NAMESPACE
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

RUN = [sys.executable, "-m", "remediator.controller_cli", "run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


@pytest.fixture
def controller(lab: RunningLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    usage = subprocess.run([*RUN, "--help"], capture_output=True, text=True, check=False, timeout=60).stdout
    if "--metrics-address" not in usage:
        pytest.skip("`remediator run` has no --metrics-address yet: its Prometheus endpoint is not wired")
    kube.ensure_namespace(lab.core, NAMESPACE)
    port = _free_port()
    log = tmp_path_factory.mktemp("metrics") / "controller.log"
    argv = [
        *RUN,
        f"--kubeconfig={lab.paths.kubeconfig}",
        f"--namespace={NAMESPACE}",
        "--dry-run",
        f"--identity=metrics-check-{uuid.uuid4().hex[:6]}",
        f"--lease-name=metrics-check-{uuid.uuid4().hex[:6]}",
        "--lease-duration=2",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={port}",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.returncode is not None


def test_metrics_endpoint_serves_the_documented_series(lab: RunningLab, controller: int) -> None:
    name = f"metrics-{uuid.uuid4().hex[:8]}"
    policy = {
        "apiVersion": "remediator.io/v1alpha1",
        "kind": "NodeHealthCheck",
        "metadata": {"name": name},
        # selects no node: nothing is ever remediated, the policy still reports its gauge
        "spec": {"selector": {"matchLabels": {"remediator.io/metrics-check": name}}, "maxUnhealthy": 1},
    }
    custom = client.CustomObjectsApi(lab.api)
    custom.create_cluster_custom_object("remediator.io", "v1alpha1", "nodehealthchecks", kube.body(policy))
    try:
        sample = f'remediator_unhealthy_nodes{{policy="{name}"}}'
        text = wait_for(
            lambda: (t := _scrape(controller)) and sample in t and t,
            timeout=60,
            what=f"{sample} on /metrics",
        )
        missing = [s for s in metrics.SERIES if f"# TYPE {s} " not in text]
        assert not missing, f"/metrics lacks {missing}"
        assert f'remediator_storm_active{{policy="{name}"}} 0.0' in text
    finally:
        custom.delete_cluster_custom_object("remediator.io", "v1alpha1", "nodehealthchecks", name)
