"""The machine API driver's reasoning (what counts as fenced, as joined), without an API server.

Only the driver's own thin wrappers around single API calls (``_get_machine``, ``_get_node``,
``_list_machines``, ``_delete_machine``) are replaced, by a tiny in-memory cluster.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from remediator.errors import BmcProtocolError, IdentityMismatch
from remediator.fencing.base import PowerState
from remediator.fencing.machineapi import MachineApiDriver, MachineNotFound, _status_message

NODE = "worker-1"


def _machine(
    uid: str, *, deleting: bool = False, node_ref: str | None = NODE, **status: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m-1", "namespace": "capi", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    if node_ref:
        status["nodeRef"] = {"kind": "Node", "name": node_ref}
    return {"metadata": meta, "spec": {"providerID": "cloud://m-1"}, "status": status}


def _node(uid: str, ready: bool = True, provider_id: str = "cloud://m-1") -> client.V1Node:
    condition = client.V1NodeCondition(type="Ready", status="True" if ready else "False")
    return client.V1Node(
        metadata=client.V1ObjectMeta(name=NODE, uid=uid),
        spec=client.V1NodeSpec(provider_id=provider_id),
        status=client.V1NodeStatus(conditions=[condition]),
    )


class FakeCluster(MachineApiDriver):
    """The driver with its single-call wrappers answered from memory."""

    def __init__(self, machine: dict[str, Any] | None, node: client.V1Node | None, **kwargs: Any) -> None:
        super().__init__(client.ApiClient(), NODE, "capi", "m-1", timeout=1, **kwargs)
        self.machine = machine
        self.node = node
        self.others: list[dict[str, Any]] = []
        self.deletes: list[str] = []

    def _get_machine(self) -> dict[str, Any] | None:
        return self.machine

    def _get_node(self) -> Any:
        return self.node

    def _list_machines(self) -> list[dict[str, Any]]:
        return ([self.machine] if self.machine else []) + self.others

    def _delete_machine(self, uid: str) -> str:
        self.deletes.append(uid)
        if self.machine is None:
            return "gone"
        if self.machine["metadata"]["uid"] != uid:
            return "replaced"
        self.machine["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
        return "deleted"


def test_on_while_the_machine_exists_even_while_deleting() -> None:
    drv = FakeCluster(_machine("u1"), _node("n1"), node_uid="n1")
    assert drv.power_state() is PowerState.ON
    drv.power_off()
    assert drv.deletes == ["u1"] and drv.machine is not None
    assert drv.machine["metadata"]["deletionTimestamp"]
    assert drv.power_state() is PowerState.ON
    drv.power_off()  # already being deleted: nothing more to send
    assert drv.deletes == ["u1"]
    drv.machine = None
    assert drv.power_state() is PowerState.OFF


def test_never_seen_machine_is_an_error_not_off() -> None:
    drv = FakeCluster(None, _node("n1"), node_uid="n1")
    with pytest.raises(MachineNotFound):
        drv.power_state()
    with pytest.raises(MachineNotFound):
        drv.power_off()
    assert drv.deletes == []


def test_a_known_uid_makes_not_found_count() -> None:
    drv = FakeCluster(None, _node("n1"), node_uid="n1", machine_uid="u1")
    assert drv.power_state() is PowerState.OFF


def test_a_new_machine_under_the_old_name_means_the_old_one_is_gone() -> None:
    drv = FakeCluster(_machine("u1"), _node("n1"), node_uid="n1")
    assert drv.power_state() is PowerState.ON
    drv.machine = _machine("u2", node_ref=None)
    assert drv.power_state() is PowerState.OFF
    drv.power_off()
    assert drv.deletes == []  # never delete the replacement


def test_refuses_a_machine_of_another_node_or_provider_id() -> None:
    drv = FakeCluster(_machine("u1", node_ref="worker-9"), _node("n1"), node_uid="n1")
    with pytest.raises(IdentityMismatch, match="worker-9"):
        drv.power_off()
    drv = FakeCluster(_machine("u1"), _node("n1"), node_uid="n1", node_provider_id="cloud://somewhere-else")
    with pytest.raises(IdentityMismatch, match="providerID"):
        drv.power_off()
    assert drv.deletes == []


def test_replacement_joined_rules() -> None:
    drv = FakeCluster(_machine("u1"), _node("n1"), node_uid="n1")
    drv.power_off()
    drv.machine = None
    # Same Node object, still Ready (stale): not a replacement.
    assert drv.power_state() is PowerState.OFF
    # New Node object, not Ready yet; then Ready.
    drv.node = _node("n2", ready=False)
    assert drv.power_state() is PowerState.OFF
    drv.node = _node("n2")
    assert drv.power_state() is PowerState.ON


def test_replacement_by_a_machine_claiming_the_same_node_object() -> None:
    drv = FakeCluster(_machine("u1"), _node("n1"), node_uid="n1")
    drv.power_off()
    drv.machine = None
    drv.others = [_machine("u3", deleting=True)]
    assert drv.power_state() is PowerState.OFF  # a deleting Machine is no replacement
    drv.others = [_machine("u3", node_ref="worker-2")]
    assert drv.power_state() is PowerState.OFF
    drv.others = [_machine("u3")]
    assert drv.power_state() is PowerState.ON


def test_unknown_node_uid_needs_a_claiming_machine() -> None:
    drv = FakeCluster(_machine("u1"), None)
    drv.power_off()
    drv.machine = None
    drv.node = _node("n9")
    assert drv.power_state() is PowerState.OFF
    drv.others = [_machine("u3")]
    assert drv.power_state() is PowerState.ON


def test_identity_from_machine_status() -> None:
    drv = FakeCluster(_machine("u1", nodeInfo={"systemUUID": "ABCDEF00-0000-0000-0000-000000000001"}), None)
    assert drv.identity().system_uuid == "abcdef00-0000-0000-0000-000000000001"
    assert FakeCluster(_machine("u1"), None).identity().system_uuid is None


def test_machine_without_uid_is_a_protocol_error() -> None:
    machine = _machine("u1")
    del machine["metadata"]["uid"]
    with pytest.raises(BmcProtocolError):
        FakeCluster(machine, None).power_state()


def test_status_message() -> None:
    assert (
        _status_message('{"kind": "Status", "message": "machines.x is forbidden"}')
        == "machines.x is forbidden"
    )
    assert _status_message("not json") == "" and _status_message(None) == ""


def test_describe_names_machine_and_node() -> None:
    drv = FakeCluster(None, None)
    assert drv.name == "machineAPI capi/m-1"
    assert "node worker-1" in drv.describe() and "cluster.x-k8s.io/v1beta1" in drv.describe()
