"""Fixtures for the Fence controller tests: CRDs, the controller as a real subprocess, real BMCs, test nodes.

The controller runs as ``python -m remediator.controller_cli run --kubeconfig ...`` against the
session's real control plane, so tests can SIGKILL it at any phase and start it again. The BMCs are
the real ones tests/integration/conftest.py starts for the session (sushy-emulator, the IPMI BMC and
the scripted Redfish BMC); here their credentials go into a Secret for the controller.

Test nodes are Node objects created by the test (not lab hosts), with a ``systemUUID`` matching their
BMC. A :class:`HostAgent` plays the host's kubelet: while the BMC says the host is on, it heartbeats
the node's Ready condition; after the host was off, it comes back with a new boot ID -- what a real
kubelet does after a power cycle.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import fence_controller as fc
from remediator.fencing import open_driver
from remediator.fencing.base import Credentials, PowerState
from remediator.lab.bmc import ScriptedRedfishBmc, ScriptedSystem, SushyEmulator
from remediator.nodefencing import node_fencing_manifest
from tests.integration.conftest import PASSWORD, USER, RunningLab
from tests.waiting import wait_for

__all__ = ["MakeNode", "wait_for"]
log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "remediator-system"
SECRET = "bmc-fence-test"
LEASE_DURATION = "4"


# --- cluster objects ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def crds(lab: RunningLab) -> None:
    """Apply the Fence and NodeFencing CRDs from crds/ (create or replace); wait until established."""
    ext = client.ApiextensionsV1Api(lab.api)
    for path in (REPO / "crds" / "fence.yaml", REPO / "crds" / "nodefencing.yaml"):
        manifest = yaml.safe_load(path.read_text())
        name = manifest["metadata"]["name"]
        try:
            ext.create_custom_resource_definition(manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            current = ext.read_custom_resource_definition(name)
            manifest["metadata"]["resourceVersion"] = current.metadata.resource_version
            ext.replace_custom_resource_definition(name, manifest)

        def established(crd_name: str = name) -> bool:
            crd = ext.read_custom_resource_definition(crd_name)
            return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

        wait_for(established, 30, f"CRD {name} established")


@pytest.fixture(scope="session")
def controller_namespace(lab: RunningLab) -> str:
    with contextlib.suppress(ApiException):
        lab.core.create_namespace({"metadata": {"name": NAMESPACE}})
    return NAMESPACE


@pytest.fixture(scope="session")
def secret(lab: RunningLab, controller_namespace: str, ca_file: str) -> str:
    """The BMC credentials Secret (with the test CA) in the controller's namespace."""
    data = {
        "username": base64.b64encode(USER.encode()).decode(),
        "password": base64.b64encode(PASSWORD.encode()).decode(),
        "ca.crt": base64.b64encode(Path(ca_file).read_bytes()).decode(),
    }
    manifest = {"metadata": {"name": SECRET, "namespace": controller_namespace}, "data": data}
    with contextlib.suppress(ApiException):
        lab.core.delete_namespaced_secret(SECRET, controller_namespace)
    lab.core.create_namespaced_secret(controller_namespace, manifest)
    return SECRET


# --- BMCs ----------------------------------------------------------------------------------------


def redfish_power(address: str, ca_file: Path) -> Callable[[], bool]:
    """A function that reads a Redfish host's power (for the host agent and assertions)."""
    driver = open_driver(address, Credentials(USER, PASSWORD), ca_file=str(ca_file), timeout=5)
    lock = threading.Lock()

    def is_on() -> bool:
        with lock:
            return driver.power_state() is PowerState.ON

    return is_on


@pytest.fixture
def sushy_on(sushy_libvirt: SushyEmulator, ca_file: str) -> SushyEmulator:
    """The sushy-emulator host, powered on."""
    with open_driver(sushy_libvirt.address(), Credentials(USER, PASSWORD), ca_file=ca_file) as drv:  # type: ignore[attr-defined]
        if drv.power_state() is not PowerState.ON:
            drv.power_on()
            wait_for(lambda: drv.power_state() is PowerState.ON, 10, "sushy host on")
    return sushy_libvirt


@pytest.fixture
def scripted(scripted_server: ScriptedRedfishBmc) -> ScriptedRedfishBmc:
    """The scripted Redfish BMC with one well-behaved system of a fresh UUID (``.systems['1']``)."""
    scripted_server.reset([ScriptedSystem(id="1", uuid=str(uuid.uuid4()))])
    return scripted_server


def resets(bmc: ScriptedRedfishBmc, reset_type: str | None = None) -> int:
    """How many Reset POSTs the scripted BMC received (ForceOff/On bodies are not logged, so count all)."""
    return sum(
        1 for method, path in bmc.requests if method == "POST" and path.endswith("ComputerSystem.Reset")
    )


# --- the controller ------------------------------------------------------------------------------


class Controller:
    """The controller as a subprocess; start, SIGKILL, start again."""

    def __init__(self, lab: RunningLab, log_dir: Path) -> None:
        self.lab = lab
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.identity = "fence-test-controller"
        self._n = 0

    def start(
        self, *, pause_at: str = "", identity: str | None = None, extra: list[str] | None = None
    ) -> Controller:
        assert self.proc is None or self.proc.poll() is not None, "controller already running"
        self._n += 1
        self.log_path = self.log_dir / f"controller-{self._n}.log"
        argv = [
            sys.executable, "-m", "remediator.controller_cli", "run",
            "--kubeconfig", str(self.lab.paths.kubeconfig),
            "--namespace", NAMESPACE,
            "--identity", identity or self.identity,
            "--lease-duration", LEASE_DURATION,
            *(extra or []),
        ]  # fmt: skip
        env = dict(os.environ, REMEDIATOR_PAUSE_AT=pause_at)
        env.pop("NODE_NAME", None)
        with self.log_path.open("wb") as logf:
            self.proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        # If another controller (e.g. one the lab started) holds the Lease, this one stands by: the
        # fence tests need the lab without its own controller.
        wait_for(
            lambda: self.leading(identity or self.identity) or self._died(),
            30,
            f"controller {identity or self.identity} leading (Lease holder: {self.holder()})",
        )
        assert self.proc.poll() is None, f"controller exited: {self.log()}"
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def leading(self, identity: str) -> bool:
        try:
            lease = client.CoordinationV1Api(self.lab.api).read_namespaced_lease(
                "remediator-controller", NAMESPACE
            )
        except ApiException:
            return False
        return bool(lease.spec and lease.spec.holder_identity == identity)

    def holder(self) -> str | None:
        try:
            lease = client.CoordinationV1Api(self.lab.api).read_namespaced_lease(
                "remediator-controller", NAMESPACE
            )
        except ApiException:
            return None
        return lease.spec.holder_identity if lease.spec else None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no Lease release -- a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path else ""


@pytest.fixture(scope="session")
def controller_process(
    lab: RunningLab, crds: None, controller_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Controller]:
    ctl = Controller(lab, tmp_path_factory.mktemp("controller"))
    ctl.start()
    yield ctl
    ctl.stop()


@pytest.fixture
def controller(controller_process: Controller) -> Iterator[Controller]:
    """The running controller (restarted plainly if a previous test left it stopped or paused)."""
    if not controller_process.running():
        controller_process.start()
    yield controller_process
    if not controller_process.running():
        controller_process.start()


# --- test nodes ----------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeUnderTest:
    """A Node object for one test, with a NodeFencing; deleted (with its Fences) afterwards."""

    def __init__(self, lab: RunningLab, name: str, system_uuid: str) -> None:
        self.lab = lab
        self.name = name
        self.system_uuid = system_uuid
        self.boot_id = str(uuid.uuid4())
        self.custom = client.CustomObjectsApi(lab.api)

    def create(self) -> NodeUnderTest:
        self.lab.core.create_node(
            {"metadata": {"name": self.name, "labels": {"remediator.io/test": "fence"}}}
        )
        self.heartbeat()
        return self

    def heartbeat(self, boot_id: str | None = None) -> None:
        if boot_id:
            self.boot_id = boot_id
        now = _now()
        status = {
            "conditions": [
                {
                    "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test host agent",
                    "lastHeartbeatTime": now, "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "systemUUID": self.system_uuid, "bootID": self.boot_id, "machineID": "m",
                "kernelVersion": "6",
                "osImage": "test", "containerRuntimeVersion": "x://1", "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }  # fmt: skip
        self.lab.core.patch_node_status(self.name, {"status": status})

    def fencing(self, levels: list[dict[str, Any]]) -> None:
        self.custom.create_cluster_custom_object(
            fc.GROUP, fc.VERSION, "nodefencings", node_fencing_manifest(self.name, levels)
        )

    def read(self) -> client.V1Node | None:
        try:
            return self.lab.core.read_node(self.name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def cleanup(self) -> None:
        for fence in fc.list_fences(self.lab.api):
            if fence["spec"]["nodeName"] == self.name:
                with contextlib.suppress(ApiException):
                    self.custom.delete_cluster_custom_object(
                        fc.GROUP, fc.VERSION, fc.PLURAL, fence["metadata"]["name"]
                    )
        with contextlib.suppress(ApiException):
            self.custom.delete_cluster_custom_object(fc.GROUP, fc.VERSION, "nodefencings", self.name)
        with contextlib.suppress(ApiException):
            self.lab.core.delete_node(self.name)


MakeNode = Callable[[str], "NodeUnderTest"]


@pytest.fixture
def make_node(lab: RunningLab, crds: None) -> Iterator[MakeNode]:
    made: list[NodeUnderTest] = []

    def make(system_uuid: str) -> NodeUnderTest:
        node = NodeUnderTest(lab, f"fence-{uuid.uuid4().hex[:6]}", system_uuid).create()
        made.append(node)
        return node

    yield make
    for node in made:
        node.cleanup()


class HostAgent:
    """Plays a host's kubelet: heartbeats Ready while the BMC says on; a new boot ID after being off."""

    def __init__(self, node: NodeUnderTest, is_on: Callable[[], bool], interval: float = 0.3) -> None:
        self.node = node
        self.is_on = is_on
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.was_off = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                on = self.is_on()
            except Exception:  # noqa: S112 - logged; the BMC may be faulty on purpose
                continue
            if not on:
                self.was_off = True
                continue
            boot = str(uuid.uuid4()) if self.was_off else None
            self.was_off = False
            with contextlib.suppress(ApiException):
                self.node.heartbeat(boot)

    def __enter__(self) -> HostAgent:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- Fences --------------------------------------------------------------------------------------


def create_fence(lab: RunningLab, node: str, **spec: Any) -> str:
    body = {
        "apiVersion": f"{fc.GROUP}/{fc.VERSION}",
        "kind": "Fence",
        "metadata": {"generateName": f"{node}-"},
        "spec": {"nodeName": node, **spec},
    }
    created = client.CustomObjectsApi(lab.api).create_cluster_custom_object(
        fc.GROUP, fc.VERSION, fc.PLURAL, body
    )
    return str(created["metadata"]["name"])


def fence_status(lab: RunningLab, name: str) -> dict[str, Any]:
    obj = fc.get_fence(lab.api, name)
    return (obj or {}).get("status") or {}


def wait_phase(lab: RunningLab, name: str, phases: set[str] | str, timeout: float = 30) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else phases

    def check() -> dict[str, Any] | None:
        status = fence_status(lab, name)
        return status if status.get("phase") in wanted else None

    return wait_for(check, timeout, f"Fence {name} in {sorted(wanted)}")


def wait_done(lab: RunningLab, name: str, timeout: float = 40) -> dict[str, Any]:
    return wait_phase(lab, name, {"Succeeded", "Failed"}, timeout)


def fence_events(lab: RunningLab, name: str) -> list[client.CoreV1Event]:
    events = lab.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}").items
    return sorted(events, key=lambda e: str(e.metadata.creation_timestamp))


def taint_keys(node: client.V1Node | None) -> set[str]:
    if node is None or not node.spec or not node.spec.taints:
        return set()
    return {f"{t.key}:{t.effect}" for t in node.spec.taints}


def redfish_level(address: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "redfish", "address": address, "credentialsSecret": SECRET,
        "callTimeoutSeconds": 3, "powerTimeoutSeconds": 5, "attempts": 1, **extra,
    }  # fmt: skip


def ipmi_level(address: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "ipmi", "address": address, "credentialsSecret": SECRET, "ipmiLegacySHA1": True,
        "callTimeoutSeconds": 3, "powerTimeoutSeconds": 5, "attempts": 1, **extra,
    }  # fmt: skip
