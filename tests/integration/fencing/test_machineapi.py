"""The machine API fence driver against the real control plane, with Cluster API Machines.

The Machine CRD is a minimal copy of Cluster API's (``machine-crd.yaml``); there is no Cluster API
controller. A small in-test :class:`FakeProvider` plays the *remote* infrastructure provider: when a
Machine gets a deletionTimestamp it "releases the host" a moment later by removing the Machine's
finalizer -- or never does, for the hold-out test. Nodes are our own objects (not lab hosts).
"""

from __future__ import annotations

import copy
import datetime
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator.errors import (
    BmcAuthenticationFailed,
    BmcUnreachable,
    ConfigError,
    IdentityMismatch,
    PowerStateNotReached,
)
from remediator.fencing.base import PowerDriver, PowerState
from remediator.fencing.machineapi import GROUP, PLURAL, VERSION, MachineApiDriver, MachineNotFound
from remediator.fencing.verify import check_identity, power_off_verified, power_on_verified
from remediator.nodefencing import node_fencing_manifest, open_level_driver, read_node_fencing
from tests.integration.conftest import RunningLab
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
REPO = HERE.parents[2]
FINALIZER = "infrastructure.example.com/host-release"
#: How long the fake provider takes to release a host (a remote system's work, not a test wait).
RELEASE_AFTER_S = 0.5


def apply_crd(api: client.ApiClient, path: Path) -> None:
    """Create the CRD in ``path`` unless it exists, and wait until it is served."""
    doc = yaml.safe_load(path.read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(doc)
    except ApiException as exc:
        if exc.status != 409:
            raise
    name = doc["metadata"]["name"]

    def established() -> bool:
        conditions = ext.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, 30, f"CRD {name} to be established")
    spec = doc["spec"]
    version = spec["versions"][0]["name"]

    def served() -> bool:
        try:
            if spec["scope"] == "Cluster":
                client.CustomObjectsApi(api).list_cluster_custom_object(
                    spec["group"], version, spec["names"]["plural"], limit=1
                )
            else:
                client.CustomObjectsApi(api).list_namespaced_custom_object(
                    spec["group"], version, "default", spec["names"]["plural"], limit=1
                )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(served, 30, f"CRD {name} to be served")


@pytest.fixture(scope="session")
def machine_crd(lab: RunningLab) -> None:
    apply_crd(lab.api, HERE / "machine-crd.yaml")


@pytest.fixture(scope="session")
def nodefencing_crd(lab: RunningLab) -> None:
    apply_crd(lab.api, REPO / "crds" / "nodefencing.yaml")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeProvider:
    """Plays a remote infrastructure provider: releases a deleted Machine's host after a moment."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        #: Machines (by name) whose hosts this provider never releases.
        self.hold: set[str] = set()
        #: Machine name -> monotonic time at which the finalizer removal was acknowledged.
        self.released: dict[str, float] = {}
        self._seen_deleting: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-capi-provider", daemon=True)

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            machines = self._custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
            for machine in machines["items"]:
                meta = machine["metadata"]
                name = meta["name"]
                if not meta.get("deletionTimestamp") or FINALIZER not in (meta.get("finalizers") or []):
                    continue
                first = self._seen_deleting.setdefault(meta["uid"], time.monotonic())
                if name in self.hold or time.monotonic() - first < RELEASE_AFTER_S:
                    continue
                self.release(name)
            self._stop.wait(0.05)

    def release(self, name: str) -> None:
        try:
            self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"finalizers": []}}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
        self.released[name] = time.monotonic()


class Capi:
    """Creates Nodes and Machines for one test and removes them afterwards."""

    def __init__(self, lab: RunningLab, namespace: str) -> None:
        self.lab = lab
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(lab.api)
        self.nodes: list[str] = []

    def node(
        self,
        name: str | None = None,
        *,
        machine: str | None = None,
        namespace_annotation: bool = True,
        ready: bool = True,
        system_uuid: str | None = None,
    ) -> client.V1Node:
        name = name or f"capi-node-{uuid.uuid4().hex[:8]}"
        annotations: dict[str, str] = {}
        if machine is not None:
            annotations["cluster.x-k8s.io/machine"] = machine
            if namespace_annotation:
                annotations["cluster.x-k8s.io/cluster-namespace"] = self.namespace
        self.lab.core.create_node({"metadata": {"name": name, "annotations": annotations}})
        if name not in self.nodes:
            self.nodes.append(name)
        status: dict[str, Any] = {}
        if ready:
            status["conditions"] = [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "test node",
                    "lastHeartbeatTime": _now(),
                    "lastTransitionTime": _now(),
                }
            ]
        if system_uuid:
            status["nodeInfo"] = {"systemUUID": system_uuid}
        if status:
            self.lab.core.patch_node_status(name, {"status": status})
        return self.lab.core.read_node(name)

    def machine(
        self,
        name: str,
        *,
        node_ref: str | None = None,
        system_uuid: str | None = None,
        finalizer: bool = True,
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Machine",
            "metadata": {"name": name, "finalizers": [FINALIZER] if finalizer else []},
            "spec": {"clusterName": "test", "bootstrap": {"dataSecretName": "none"}},
        }
        created = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
        status: dict[str, Any] = {"phase": "Running"}
        if node_ref:
            status["nodeRef"] = {"apiVersion": "v1", "kind": "Node", "name": node_ref}
        if system_uuid:
            status["nodeInfo"] = {"systemUUID": system_uuid}
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )
        return cast(dict[str, Any], created)

    def get_machine(self, name: str) -> dict[str, Any] | None:
        try:
            found = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
            return cast(dict[str, Any], found)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete_node(self, name: str) -> None:
        try:
            self.lab.core.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def cleanup(self) -> None:
        machines = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        for machine in machines["items"]:
            name = machine["metadata"]["name"]
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"finalizers": []}}
            )
        for name in self.nodes:
            self.delete_node(name)


@pytest.fixture
def capi(lab: RunningLab, namespace: str, machine_crd: None) -> Iterator[Capi]:
    helper = Capi(lab, namespace)
    yield helper
    helper.cleanup()


@pytest.fixture
def provider(lab: RunningLab, namespace: str, machine_crd: None) -> Iterator[FakeProvider]:
    with FakeProvider(lab.api, namespace) as fake:
        yield fake


class RecordingDriver:
    """Wraps a driver and records every state it reads (to see ON while the Machine is torn down)."""

    def __init__(self, inner: MachineApiDriver) -> None:
        self.inner = inner
        self.states: list[PowerState] = []

    @property
    def name(self) -> str:
        return self.inner.name

    def describe(self) -> str:
        return self.inner.describe()

    def power_state(self) -> PowerState:
        state = self.inner.power_state()
        self.states.append(state)
        return state

    def power_off(self) -> None:
        self.inner.power_off()

    def power_on(self) -> None:
        self.inner.power_on()

    def identity(self) -> Any:
        return self.inner.identity()

    def close(self) -> None:
        self.inner.close()


def _fenced(capi: Capi, provider: FakeProvider) -> tuple[MachineApiDriver, str, str]:
    """A node whose Machine was deleted and released; returns (driver, node name, machine name)."""
    machine = f"m-{uuid.uuid4().hex[:6]}"
    node = str(capi.node(machine=machine).metadata.name)
    capi.machine(machine, node_ref=node)
    drv = MachineApiDriver.for_node(capi.lab.api, node, timeout=5)
    assert power_off_verified(drv, 20).state is PowerState.OFF
    return drv, node, machine


def test_fence_is_proven_only_once_the_provider_released_the_machine(
    capi: Capi, provider: FakeProvider
) -> None:
    machine = f"m-{uuid.uuid4().hex[:6]}"
    system_uuid = str(uuid.uuid4())
    node = capi.node(machine=machine, system_uuid=system_uuid).metadata.name
    capi.machine(machine, node_ref=node, system_uuid=system_uuid)
    drv = MachineApiDriver.for_node(capi.lab.api, node, timeout=5)
    assert isinstance(drv, PowerDriver)
    assert drv.power_state() is PowerState.ON
    assert check_identity(drv, system_uuid.upper()).system_uuid == system_uuid
    assert machine in drv.describe() and node in drv.describe()

    recording = RecordingDriver(drv)
    result = power_off_verified(recording, 20)
    returned_at = time.monotonic()

    assert result.state is PowerState.OFF and result.command_sent
    # OFF was read back only after the provider removed the finalizer, and the Machine is gone.
    assert machine in provider.released and provider.released[machine] <= returned_at
    assert capi.get_machine(machine) is None
    # While the Machine existed with a deletionTimestamp, the driver said ON.
    assert recording.states[0] is PowerState.ON and recording.states[-1] is PowerState.OFF
    assert recording.states.count(PowerState.ON) >= 2
    assert result.elapsed >= RELEASE_AFTER_S
    # Still fenced: the old Node object remains, no replacement joined; and nothing more to send.
    assert drv.power_state() is PowerState.OFF
    assert not power_off_verified(drv, 5).command_sent


def test_a_machine_whose_deletion_never_completes(capi: Capi, provider: FakeProvider) -> None:
    machine = f"m-{uuid.uuid4().hex[:6]}"
    provider.hold.add(machine)
    node = capi.node(machine=machine).metadata.name
    capi.machine(machine, node_ref=node)
    drv = MachineApiDriver.for_node(capi.lab.api, node, timeout=5)
    with pytest.raises(PowerStateNotReached) as err:
        power_off_verified(drv, 2)
    assert "last state seen: on" in str(err.value)
    left = capi.get_machine(machine)
    assert left is not None and left["metadata"].get("deletionTimestamp")
    assert drv.power_state() is PowerState.ON

    # The provider finally releases it: now (and only now) the fence is proven.
    provider.release(machine)
    assert power_off_verified(drv, 10).state is PowerState.OFF


def test_no_machine_reference_is_a_config_error(capi: Capi) -> None:
    plain = capi.node().metadata.name
    with pytest.raises(ConfigError, match="annotation"):
        MachineApiDriver.for_node(capi.lab.api, plain)
    with pytest.raises(ConfigError, match="does not exist"):
        MachineApiDriver.for_node(capi.lab.api, f"no-such-node-{uuid.uuid4().hex[:6]}")
    no_namespace = capi.node(machine="m-x", namespace_annotation=False).metadata.name
    with pytest.raises(ConfigError, match="namespace"):
        MachineApiDriver.for_node(capi.lab.api, no_namespace)
    # An explicit reference works without annotations.
    drv = MachineApiDriver.for_node(
        capi.lab.api, plain, machine_namespace=capi.namespace, machine_name="m-explicit"
    )
    assert drv.name == f"machineAPI {capi.namespace}/m-explicit"


def test_a_machine_that_never_existed_is_never_off(capi: Capi) -> None:
    node = capi.node(machine="m-never-created").metadata.name
    drv = MachineApiDriver.for_node(capi.lab.api, node, timeout=5)
    with pytest.raises(MachineNotFound, match="never seen"):
        drv.power_state()
    with pytest.raises(MachineNotFound):
        power_off_verified(drv, 5)
    with pytest.raises(MachineNotFound):
        drv.identity()


def test_api_failures_are_typed(capi: Capi, lab: RunningLab, closed_tcp_port: int) -> None:
    machine = f"m-{uuid.uuid4().hex[:6]}"
    node = capi.node(machine=machine).metadata.name
    capi.machine(machine, node_ref=node)

    anonymous = copy.deepcopy(lab.api.configuration)
    anonymous.cert_file = anonymous.key_file = None
    anonymous.api_key = {}
    drv = MachineApiDriver(client.ApiClient(anonymous), node, capi.namespace, machine, timeout=5)
    with pytest.raises(BmcAuthenticationFailed, match=r"HTTP 40[13]"):
        drv.power_state()

    dead = copy.deepcopy(lab.api.configuration)
    dead.host = f"https://127.0.0.1:{closed_tcp_port}"
    drv = MachineApiDriver(client.ApiClient(dead), node, capi.namespace, machine, timeout=2)
    start = time.monotonic()
    with pytest.raises(BmcUnreachable, match="cannot reach the API server"):
        drv.power_state()
    assert time.monotonic() - start < 2


def test_refuses_a_machine_of_another_node(capi: Capi, provider: FakeProvider) -> None:
    machine = f"m-{uuid.uuid4().hex[:6]}"
    node = capi.node(machine=machine).metadata.name
    capi.machine(machine, node_ref="some-other-node")
    drv = MachineApiDriver.for_node(capi.lab.api, node, timeout=5)
    with pytest.raises(IdentityMismatch, match="some-other-node"):
        power_off_verified(drv, 5)
    left = capi.get_machine(machine)
    assert left is not None and not left["metadata"].get("deletionTimestamp")


def test_power_on_means_a_new_node_joined(capi: Capi, provider: FakeProvider) -> None:
    drv, node, _ = _fenced(capi, provider)
    drv.power_on()  # a no-op request
    assert drv.power_state() is PowerState.OFF
    # The old Node object is removed; a new one registers under the same name, not Ready yet.
    capi.delete_node(node)
    wait_for(lambda: _node_missing(capi, node), 10, f"node {node} to be deleted")
    capi.node(node, ready=False)
    assert drv.power_state() is PowerState.OFF
    with pytest.raises(PowerStateNotReached):
        power_on_verified(drv, 1)
    capi.lab.core.patch_node_status(
        node,
        {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "joined",
                     "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}
                ]
            }
        },
    )  # fmt: skip
    result = power_on_verified(drv, 10)
    assert result.state is PowerState.ON


def test_power_on_means_a_new_machine_claims_the_node(capi: Capi, provider: FakeProvider) -> None:
    drv, node, machine = _fenced(capi, provider)
    # The Node object stays (same UID, still Ready from before): not a replacement by itself.
    assert drv.power_state() is PowerState.OFF
    # A new Machine reusing the old name is not the old one, and not yet a replacement either.
    capi.machine(machine)
    assert drv.power_state() is PowerState.OFF
    drv.power_off()  # must never delete the replacement
    # Nor may a driver that resumes with the UID of the Machine it fenced (e.g. after a restart).
    resumed = MachineApiDriver(
        capi.lab.api, node, capi.namespace, machine, timeout=5, machine_uid=drv.machine_uid
    )
    resumed.power_off()
    assert resumed.power_state() is PowerState.OFF
    replacement = capi.get_machine(machine)
    assert replacement is not None and not replacement["metadata"].get("deletionTimestamp")
    # It claims the node (status.nodeRef): the replacement joined.
    capi.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, capi.namespace, PLURAL, machine,
        {"status": {"nodeRef": {"apiVersion": "v1", "kind": "Node", "name": node}}},
    )  # fmt: skip
    assert power_on_verified(drv, 10).state is PowerState.ON


def test_through_node_fencing(capi: Capi, provider: FakeProvider, nodefencing_crd: None) -> None:
    custom = client.CustomObjectsApi(capi.lab.api)
    # One node found through its annotation, one through an explicit reference in the level.
    annotated_machine = f"m-{uuid.uuid4().hex[:6]}"
    annotated = capi.node(machine=annotated_machine).metadata.name
    capi.machine(annotated_machine, node_ref=annotated)
    explicit_machine = f"m-{uuid.uuid4().hex[:6]}"
    explicit = capi.node().metadata.name
    capi.machine(explicit_machine, node_ref=explicit)
    levels = {
        annotated: [{"type": "machineAPI", "callTimeoutSeconds": 5}],
        explicit: [
            {"type": "machineAPI", "machineNamespace": capi.namespace, "machineName": explicit_machine}
        ],
    }
    for node, node_levels in levels.items():
        custom.create_cluster_custom_object(
            "remediator.io", "v1alpha1", "nodefencings", node_fencing_manifest(node, node_levels)
        )
    try:
        for node in levels:
            spec = read_node_fencing(capi.lab.api, node)
            (level,) = spec.levels
            assert level.type == "machineAPI"
            drv = open_level_driver(level, capi.lab.api, capi.namespace, node)
            assert isinstance(drv, MachineApiDriver)
            assert power_off_verified(drv, level.power_timeout_s).state is PowerState.OFF
        assert capi.get_machine(annotated_machine) is None and capi.get_machine(explicit_machine) is None
    finally:
        for node in levels:
            custom.delete_cluster_custom_object("remediator.io", "v1alpha1", "nodefencings", node)


def _node_missing(capi: Capi, name: str) -> bool:
    try:
        capi.lab.core.read_node(name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False
