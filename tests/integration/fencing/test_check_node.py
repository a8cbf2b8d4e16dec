"""`remediator bmc check --node` against the real control plane and real BMC emulators.

Each test creates its own Node (not a lab host: their systemUUIDs are random), with
``status.nodeInfo.systemUUID`` set through the status subresource, a NodeFencing named like it whose
levels point at sushy-emulator (libvirt ``test:///default``) and a file-backed IPMI BMC, and the
credentials Secrets in the test's namespace (passed with ``--namespace``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator.fencing.base import Credentials
from remediator.lab.bmc import IpmiBmc, SushyEmulator
from remediator.nodefencing import GROUP, PLURAL, VERSION, node_fencing_manifest
from tests.integration.conftest import TEST_DOMAIN_UUID, RunningLab
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
WRONG_PASSWORD = "Wrong-7c21aa-not-in-output"


@pytest.fixture(scope="session")
def nodefencing_crd(lab: RunningLab) -> None:
    doc = yaml.safe_load((REPO / "crds" / "nodefencing.yaml").read_text())
    ext = client.ApiextensionsV1Api(lab.api)
    try:
        ext.create_custom_resource_definition(doc)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def served() -> bool:
        try:
            client.CustomObjectsApi(lab.api).list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(served, 30, "the NodeFencing CRD to be served")


@pytest.fixture(scope="module")
def ipmi_same_host(tmp_path_factory: pytest.TempPathFactory, creds: Credentials) -> Iterator[IpmiBmc]:
    """An IPMI BMC reporting the same system as the Redfish one (one host, two BMC interfaces)."""
    with IpmiBmc(
        tmp_path_factory.mktemp("ipmi-check"),
        username=creds.username,
        password=creds.password,
        system_uuid=TEST_DOMAIN_UUID,
    ) as bmc:
        yield bmc


def _secret(name: str, username: str, password: str, ca_pem: bytes | None = None) -> dict[str, Any]:
    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    data = {"username": b64(username.encode()), "password": b64(password.encode())}
    if ca_pem is not None:
        data["ca.crt"] = b64(ca_pem)
    return {"metadata": {"name": name}, "type": "Opaque", "data": data}


class Setup:
    """One node with its NodeFencing and Secrets; removed afterwards."""

    def __init__(
        self,
        lab: RunningLab,
        namespace: str,
        sushy: SushyEmulator,
        ipmi: IpmiBmc,
        ca_file: str,
        creds: Credentials,
    ) -> None:
        self.lab = lab
        self.namespace = namespace
        self.sushy = sushy
        self.ipmi = ipmi
        self.creds = creds
        self.custom = client.CustomObjectsApi(lab.api)
        self.node = f"chk-{uuid.uuid4().hex[:8]}"
        ca_pem = Path(ca_file).read_bytes()
        lab.core.create_namespaced_secret(namespace, _secret("bmc", creds.username, creds.password, ca_pem))
        lab.core.create_namespaced_secret(
            namespace, _secret("bmc-wrong", creds.username, WRONG_PASSWORD, ca_pem)
        )
        self.created_fencing = False

    def create_node(self, system_uuid: str | None) -> None:
        self.lab.core.create_node({"metadata": {"name": self.node}})
        if system_uuid:
            self.lab.core.patch_node_status(self.node, {"status": {"nodeInfo": {"systemUUID": system_uuid}}})

    def levels(self, redfish_ref: str = "bmc", ipmi_ref: str = "bmc") -> list[dict[str, Any]]:
        return [
            {"type": "redfish", "address": self.sushy.address(), "credentialsSecret": redfish_ref},
            {
                "type": "ipmi",
                "address": self.ipmi.address,
                "credentialsSecret": ipmi_ref,
                "ipmiLegacySHA1": True,
                "callTimeoutSeconds": 5,
            },
        ]

    def create_fencing(self, levels: list[dict[str, Any]]) -> None:
        self.custom.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, node_fencing_manifest(self.node, levels)
        )
        self.created_fencing = True

    def fencing(self) -> dict[str, Any]:
        return cast(dict[str, Any], self.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, self.node))

    def cleanup(self) -> None:
        if self.created_fencing:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, self.node)
        try:
            self.lab.core.delete_node(self.node)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def setup(
    lab: RunningLab,
    namespace: str,
    nodefencing_crd: None,
    sushy_libvirt: SushyEmulator,
    ipmi_same_host: IpmiBmc,
    ca_file: str,
    creds: Credentials,
) -> Iterator[Setup]:
    ipmi_same_host.set_power(True)
    ipmi_same_host.set_stuck(False)
    helper = Setup(lab, namespace, sushy_libvirt, ipmi_same_host, ca_file, creds)
    yield helper
    helper.cleanup()


def check(setup: Setup, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    from remediator import cli

    argv = [
        "bmc", "check", "--node", setup.node,
        "--kubeconfig", str(setup.lab.paths.kubeconfig), "--namespace", setup.namespace, *extra,
    ]  # fmt: skip
    code = cli.main(argv)
    out, err = capsys.readouterr()
    for secret in (setup.creds.password, WRONG_PASSWORD):
        assert secret not in out and secret not in err
    return code, out, err


def _verdicts(out: str) -> list[str]:
    """PASS/FAIL of each ``level N ...: VERDICT`` line, in order."""
    return [line.rsplit(": ", 1)[1] for line in out.splitlines() if line.startswith("level ")]


def _checked_condition(setup: Setup) -> dict[str, Any]:
    conditions = setup.fencing().get("status", {}).get("conditions", [])
    (checked,) = [c for c in conditions if c["type"] == "Checked"]
    return dict(checked)


def test_all_levels_pass(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.create_node(TEST_DOMAIN_UUID)
    setup.create_fencing(setup.levels())
    code, out, _ = check(setup, capsys)
    assert code == 0, out
    assert _verdicts(out) == ["PASS", "PASS"] and "result: PASS" in out
    assert "matches the node" in out and "FAIL" not in out
    assert setup.ipmi.is_on()  # nothing touched power

    code, out, _ = check(setup, capsys, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["node_system_uuid"] == TEST_DOMAIN_UUID
    for level in doc["levels"]:
        assert level["ok"] and level["steps"] == {
            "credentials": "ok", "reachable": "ok", "login": "ok", "identity": "ok"
        }  # fmt: skip
        assert level["system_uuid"] == TEST_DOMAIN_UUID and level["power"] in ("on", "off")
    assert [level["type"] for level in doc["levels"]] == ["redfish", "ipmi"]

    condition = _checked_condition(setup)
    assert condition["status"] == "True" and condition["reason"] == "AllLevelsPassed"
    assert setup.fencing()["status"]["summary"] == "redfish, ipmi"


def test_wrong_password_fails_that_level(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.create_node(TEST_DOMAIN_UUID)
    setup.create_fencing(setup.levels(redfish_ref="bmc-wrong", ipmi_ref="bmc-wrong"))
    code, out, _ = check(setup, capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    for level in doc["levels"]:
        assert level["steps"]["credentials"] == "ok" and level["steps"]["reachable"] == "ok"
        assert level["steps"]["login"] == "failed" and level["steps"]["identity"] == "skipped"
        assert level["error_type"] == "BmcAuthenticationFailed"
        assert "rejected the credentials" in level["error"]

    code, out, _ = check(setup, capsys)
    assert code == 1 and _verdicts(out) == ["FAIL", "FAIL"] and "credentials accepted" in out
    condition = _checked_condition(setup)
    assert condition["status"] == "False" and condition["reason"] == "LevelFailed"
    assert "credentials accepted failed" in condition["message"]


def test_missing_secret(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.create_node(TEST_DOMAIN_UUID)
    levels = setup.levels(ipmi_ref="no-such-secret")
    setup.create_fencing(levels)
    code, out, _ = check(setup, capsys)
    assert code == 1
    assert _verdicts(out) == ["PASS", "FAIL"]
    assert f"Secret {setup.namespace}/no-such-secret does not exist" in out
    assert "result: FAIL (1 of 2 fence levels failed: level 2 ipmi: credentials Secret failed)" in out


def test_identity_mismatch(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    other = str(uuid.uuid4())
    setup.create_node(other)
    setup.create_fencing(setup.levels())
    code, out, _ = check(setup, capsys, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["node_system_uuid"] == other
    for level in doc["levels"]:
        assert level["steps"]["login"] == "ok" and level["steps"]["identity"] == "failed"
        assert level["error_type"] == "IdentityMismatch" and other in level["error"]
        assert level["system_uuid"] == TEST_DOMAIN_UUID and "would refuse to fence" in level["error"]
    assert setup.ipmi.is_on()


def test_node_without_system_uuid_is_unverified_not_failed(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.create_node(None)
    setup.create_fencing(setup.levels())
    code, out, _ = check(setup, capsys, "--no-record")
    assert code == 0 and "unverified" in out and "no systemUUID" in out
    assert "conditions" not in setup.fencing().get("status", {})


def test_no_node_fencing_is_a_clear_error(setup: Setup, capsys: pytest.CaptureFixture[str]) -> None:
    setup.create_node(TEST_DOMAIN_UUID)
    code, out, err = check(setup, capsys)
    assert code == 1 and out == ""
    assert err.startswith("remediator: error: ") and "has no NodeFencing" in err
