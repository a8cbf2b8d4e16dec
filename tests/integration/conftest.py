"""Integration fixtures: one real lab (control plane + kwok hosts) for the whole test session.

The lab is started through ``remediator.lab.client`` -- the same code path as ``remediator lab up``
-- in a temporary state dir, and stopped at the end of the session. Tests keep apart by namespaces
and unique names; a test that breaks a host heals it before it returns.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from remediator import kube
from remediator.lab import client as lab_client
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers

LAB_HOSTS = 3


@dataclass(frozen=True)
class RunningLab:
    paths: LabPaths
    api: client.ApiClient
    timers: LabTimers

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    # A short socket path: AF_UNIX paths are limited to 107 bytes.
    root = Path(os.environ.get("REMEDIATOR_TEST_LAB_DIR") or tmp_path_factory.mktemp("lab"))
    paths = LabPaths(root)
    timers = LabTimers()
    # Tests start their own controllers (and kill them); the shared lab runs none, and no policy.
    lab_client.start(paths, LAB_HOSTS, timers, timeout=300, controller=False, health_check=False)
    try:
        api = kube.api_client(paths.kubeconfig)
        yield RunningLab(paths, api, timers)
    finally:
        lab_client.stop(paths)


@pytest.fixture
def namespace(lab: RunningLab) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    lab.core.create_namespace({"metadata": {"name": name}})
    yield name
    lab.core.delete_namespace(name)
