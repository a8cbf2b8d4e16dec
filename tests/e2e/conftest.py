"""End-to-end fixtures: one full lab for the session, as `remediator lab up` makes it by default --
control plane, hosts with BMCs and libvirt, the vmcore handlers and controller, the remediation
controller and the lab's NodeHealthCheck."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from remediator.lab import client as lab_client
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers


@pytest.fixture(scope="session")
def full_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabPaths]:
    paths = LabPaths(Path(tmp_path_factory.mktemp("e2e-lab")))
    lab_client.start(paths, 3, LabTimers(), timeout=300)
    try:
        yield paths
    finally:
        lab_client.stop(paths)
