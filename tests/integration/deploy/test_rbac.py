"""Least privilege, checked against the lab's real API server after the chart's RBAC and admission
policies were applied: SubjectAccessReviews for what each service account may and may not do, and
real requests made with a pod-bound token of the vmcore handler (or by impersonation carrying the
node claim) for the rule RBAC cannot express: the handler writes only its own node's objects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from tests.integration.conftest import RunningLab
from tests.integration.deploy.conftest import NAMESPACE, VMCORE_NAMESPACE
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

CONTROLLER = f"system:serviceaccount:{NAMESPACE}:remediator-controller"
VMCORE = f"system:serviceaccount:{VMCORE_NAMESPACE}:vmcore-controller"
HANDLER = f"system:serviceaccount:{VMCORE_NAMESPACE}:vmcore-handler"
R, V = "remediator.io", "vmcore.remediator.io"
NODE_CLAIM = "authentication.kubernetes.io/node-name"
LAUNCHER = "registry.k8s.io/pause:3.10"

# (who, verb, group, resource[/subresource], namespace, name) -> allowed. The permissions table of
# the README is this table's "True" rows.
ACCESS: list[tuple[str, str, str, str, str, str, bool]] = [
    # remediation controller: fencing, cluster-wide
    (CONTROLLER, "watch", R, "fences", "", "", True),
    (CONTROLLER, "create", R, "fences", "", "", True),
    (CONTROLLER, "patch", R, "fences/status", "", "", True),
    (CONTROLLER, "delete", R, "fences", "", "", False),
    (CONTROLLER, "get", R, "nodefencings", "", "", True),
    (CONTROLLER, "list", R, "nodefencings", "", "", False),
    (CONTROLLER, "patch", R, "nodefencings", "", "", False),
    (CONTROLLER, "watch", R, "nodehealthchecks", "", "", True),
    (CONTROLLER, "patch", R, "nodehealthchecks/status", "", "", True),
    (CONTROLLER, "create", R, "nodehealthchecks", "", "", False),
    (CONTROLLER, "patch", "", "nodes", "", "", True),
    (CONTROLLER, "delete", "", "nodes", "", "", True),
    (CONTROLLER, "create", "", "nodes", "", "", False),
    (CONTROLLER, "list", "", "pods", "", "", True),
    (CONTROLLER, "delete", "", "pods", "any-ns", "", True),
    (CONTROLLER, "create", "", "pods", "any-ns", "", False),
    (CONTROLLER, "delete", "storage.k8s.io", "volumeattachments", "", "", True),
    (CONTROLLER, "list", "apiextensions.k8s.io", "customresourcedefinitions", "", "", True),
    (CONTROLLER, "delete", "cluster.x-k8s.io", "machines", "capi", "", True),  # machineAPI.enabled
    (CONTROLLER, "watch", "coordination.k8s.io", "leases", "kube-node-lease", "", True),  # fast path
    (CONTROLLER, "patch", "coordination.k8s.io", "leases", "kube-node-lease", "", False),
    (CONTROLLER, "watch", "coordination.k8s.io", "leases", "kube-system", "", False),  # only node leases
    # ... its own namespace: Secrets by name, its Lease, Events
    (CONTROLLER, "get", "", "secrets", NAMESPACE, "bmc-worker-1", True),
    (CONTROLLER, "list", "", "secrets", NAMESPACE, "", False),
    (CONTROLLER, "watch", "", "secrets", NAMESPACE, "", False),
    (CONTROLLER, "create", "", "secrets", NAMESPACE, "", False),
    (CONTROLLER, "get", "", "secrets", "default", "bmc-worker-1", False),
    (CONTROLLER, "get", "", "secrets", "kube-system", "x", False),
    (CONTROLLER, "get", "", "secrets", VMCORE_NAMESPACE, "x", False),
    (CONTROLLER, "patch", "coordination.k8s.io", "leases", NAMESPACE, "remediator-controller", True),
    (CONTROLLER, "patch", "coordination.k8s.io", "leases", NAMESPACE, "someone-elses-lease", False),
    (CONTROLLER, "create", "coordination.k8s.io", "leases", NAMESPACE, "", True),
    (CONTROLLER, "create", "", "events", NAMESPACE, "", True),
    (CONTROLLER, "create", "", "events", "default", "", True),
    (CONTROLLER, "create", "", "events", "kube-system", "", False),
    (CONTROLLER, "get", "", "namespaces", NAMESPACE, NAMESPACE, True),
    (CONTROLLER, "get", "", "namespaces", "kube-system", "kube-system", False),
    # vmcore controller: VMs, their pods and PDBs; reads nodes and fences; never Secrets
    (VMCORE, "watch", V, "virtualmachines", "", "", True),
    (VMCORE, "patch", V, "virtualmachines/status", "apps", "", True),
    (VMCORE, "create", V, "virtualmachinemigrations", "apps", "", True),
    (VMCORE, "delete", V, "virtualmachines", "apps", "", False),
    (VMCORE, "create", "", "pods", "apps", "", True),
    (VMCORE, "delete", "", "pods", "apps", "", True),
    (VMCORE, "create", "policy", "poddisruptionbudgets", "apps", "", True),
    (VMCORE, "watch", "", "nodes", "", "", True),
    (VMCORE, "patch", "", "nodes", "", "", False),
    (VMCORE, "watch", R, "fences", "", "", True),
    (VMCORE, "create", R, "fences", "", "", False),
    (VMCORE, "get", "", "secrets", "apps", "x", False),
    (VMCORE, "get", "", "secrets", NAMESPACE, "bmc-worker-1", False),
    # vmcore handler: reads its pods and VMs, writes annotations and status.domains (narrowed by policy)
    (HANDLER, "watch", "", "pods", "", "", True),
    (HANDLER, "patch", "", "pods", "apps", "", True),
    (HANDLER, "create", "", "pods", "apps", "", False),
    (HANDLER, "delete", "", "pods", "apps", "", False),
    (HANDLER, "get", V, "virtualmachines", "apps", "", True),
    (HANDLER, "patch", V, "virtualmachines/status", "apps", "", True),
    (HANDLER, "patch", V, "virtualmachines", "apps", "", False),
    (HANDLER, "patch", "", "nodes", "", "lab-host-2", False),
    (HANDLER, "get", "", "nodes", "", "lab-host-1", False),
    (HANDLER, "get", "", "secrets", NAMESPACE, "bmc-worker-1", False),
    (HANDLER, "get", "", "secrets", VMCORE_NAMESPACE, "x", False),
    (HANDLER, "list", "", "secrets", "", "", False),
    (HANDLER, "watch", R, "fences", "", "", False),
]


def review(
    lab: RunningLab, user: str, verb: str, group: str, resource: str, namespace: str, name: str
) -> bool:
    resource, _, sub = resource.partition("/")
    ns = user.split(":")[2]
    body = {
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "resourceAttributes": {
                "verb": verb,
                "group": group,
                "resource": resource,
                "subresource": sub,
                "namespace": namespace,
                "name": name,
            },
        }
    }
    result = client.AuthorizationV1Api(lab.api).create_subject_access_review(kube.body(body))
    return bool(result.status.allowed)


def test_permissions(lab: RunningLab, installed_rbac: list[dict[str, Any]]) -> None:
    wrong = []
    for who, verb, group, resource, namespace, name, allowed in ACCESS:
        if review(lab, who, verb, group, resource, namespace, name) != allowed:
            where = f" in {namespace}" if namespace else ""
            wrong.append(f"{who.split(':')[-1]} {'may not' if allowed else 'may'} {verb} {resource}{where}")
    assert not wrong, "; ".join(wrong)


def test_kubectl_auth_can_i_agrees(lab: RunningLab, installed_rbac: list[dict[str, Any]], tools: Any) -> None:
    """The same answers through impersonation, as an admin would check them."""
    for who, verb, what, namespace, allowed in (
        (HANDLER, "get", "secrets", NAMESPACE, False),
        (CONTROLLER, "get", "secrets", NAMESPACE, True),
        (CONTROLLER, "get", "secrets", "default", False),
        (HANDLER, "patch", "virtualmachines.vmcore.remediator.io --subresource=status", "default", True),
    ):
        try:
            out = tools.run(
                "kubectl", "auth", "can-i", verb, *what.split(), "-n", namespace, f"--as={who}",
                kubeconfig=lab.paths.kubeconfig,
            )  # fmt: skip
        except AssertionError as exc:  # `can-i` exits 1 for "no"
            out = str(exc)
        assert ("yes" in out.split()) == allowed, f"{who} {verb} {what} -n {namespace}: {out}"


# --- the handler writes only its own node's objects (ValidatingAdmissionPolicy) ----------------------


@pytest.fixture(scope="module")
def scene(lab: RunningLab, installed_rbac: list[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """A namespace with a pod on lab-host-1 and one on lab-host-2, a halted VirtualMachine whose
    status has lab-host-2's entry, and a handler pod on lab-host-1 (for its pod-bound token).

    The lab runs a vmcore controller, which owns VM pods and VM status: the pods here carry no VM
    label (the policy does not look at labels), the VM is Halted, and the checks below use merge
    patches with fresh values, so that what the controller does meanwhile changes no answer."""
    ns = f"t-{uuid.uuid4().hex[:8]}"
    kube.ensure_namespace(lab.core, ns)
    # Pods of a new namespace are refused until kube-controller-manager made its default account.
    wait_for(lambda: _has_default_account(lab, ns), timeout=30, what=f"serviceaccount {ns}/default")

    def pod(name: str, node: str, namespace: str, sa: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "image": LAUNCHER}]}
        if sa:
            spec["serviceAccountName"] = sa
        return {"metadata": {"name": name, "labels": {"app": "deploy-check"}}, "spec": spec}

    lab.core.create_namespaced_pod(ns, pod("mine", "lab-host-1", ns))
    lab.core.create_namespaced_pod(ns, pod("theirs", "lab-host-2", ns))
    handler = f"handler-{uuid.uuid4().hex[:6]}"
    lab.core.create_namespaced_pod(
        VMCORE_NAMESPACE, pod(handler, "lab-host-1", VMCORE_NAMESPACE, "vmcore-handler")
    )
    custom = client.CustomObjectsApi(lab.api)
    vm = {
        "apiVersion": f"{V}/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm-1"},
        "spec": {"runStrategy": "Halted"},
    }
    custom.create_namespaced_custom_object(V, "v1alpha1", ns, "virtualmachines", kube.body(vm))
    status = {
        "phase": "Running",
        "activePod": "mine",
        "domains": {"lab-host-2": {"pod": "old", "state": "Running"}},
    }
    custom.patch_namespaced_custom_object_status(
        V, "v1alpha1", ns, "virtualmachines", "vm-1", {"status": status}
    )
    # A freshly applied policy takes effect once the API server's informer has it: wait for that.
    anonymous = client.CoreV1Api(client_with(lab, headers={"Impersonate-User": HANDLER}))
    probe = {"metadata": {"annotations": {"probe": "1"}}}

    def enforced() -> bool:
        answer = attempt(lambda: anonymous.patch_namespaced_pod("mine", ns, probe, dry_run="All"))
        return answer.startswith("422")

    wait_for(
        enforced,
        timeout=30,
        what="the admission policy vmcore-handler-own-node to take effect",
    )
    try:
        yield {"namespace": ns, "handler_pod": handler}
    finally:
        lab.core.delete_namespaced_pod(handler, VMCORE_NAMESPACE, grace_period_seconds=0)
        lab.core.delete_namespace(ns)


def _has_default_account(lab: RunningLab, namespace: str) -> bool:
    try:
        lab.core.read_namespaced_service_account("default", namespace)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def handler_token(lab: RunningLab, pod: str) -> str:
    """A token of the handler's service account bound to its pod: it carries the pod's node."""
    uid = lab.core.read_namespaced_pod(pod, VMCORE_NAMESPACE).metadata.uid
    request = {
        "spec": {
            "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
        }
    }
    answer = lab.core.create_namespaced_service_account_token(
        "vmcore-handler", VMCORE_NAMESPACE, kube.body(request)
    )
    return str(answer.status.token)


def client_with(
    lab: RunningLab, *, token: str | None = None, headers: dict[str, str] | None = None
) -> client.ApiClient:
    configuration = lab.api.configuration
    if token is not None:
        fresh = client.Configuration()
        fresh.host = configuration.host
        fresh.ssl_ca_cert = configuration.ssl_ca_cert
        fresh.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(fresh)
    api = kube.api_client(lab.paths.kubeconfig)
    for key, value in (headers or {}).items():
        api.set_default_header(key, value)  # type: ignore[no-untyped-call]
    return api


def attempt(call: Any) -> str:
    """'allowed', or the API server's refusal message."""
    try:
        call()
    except ApiException as exc:
        return f"{exc.status}: {json.loads(exc.body).get('message', '')}"
    return "allowed"


def check_own_node_rule(api: client.ApiClient, ns: str) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    fresh = uuid.uuid4().hex[:8]

    def annotate(pod: str) -> str:
        return attempt(
            lambda: core.patch_namespaced_pod(pod, ns, {"metadata": {"annotations": {f"{V}/x": fresh}}})
        )

    def status(patch: dict[str, Any]) -> str:
        return attempt(
            lambda: custom.patch_namespaced_custom_object_status(
                V, "v1alpha1", ns, "virtualmachines", "vm-1", {"status": patch}
            )
        )

    assert annotate("mine") == "allowed"
    refused = annotate("theirs")
    assert refused.startswith("422") and "only change pods bound to its own node" in refused, refused
    relabel = attempt(lambda: core.patch_namespaced_pod("mine", ns, {"metadata": {"labels": {"app": fresh}}}))
    assert "not its labels" in relabel, relabel
    entry = {"pod": "mine", "state": "Starting", "reason": fresh}
    assert status({"domains": {"lab-host-1": entry}}) == "allowed"
    other = status({"domains": {"lab-host-2": {**entry, "pod": "theirs"}}})
    assert 'only write status.domains["lab-host-1"]' in other, other
    vm: Any = custom.get_namespaced_custom_object(V, "v1alpha1", ns, "virtualmachines", "vm-1")
    current = (vm.get("status") or {}).get("phase")
    phase = status({"phase": "Migrating" if current != "Migrating" else "Scheduling"})
    assert "the rest belongs to the controller" in phase, phase
    assert status({"domains": {"lab-host-1": None}}) == "allowed"
    secret = attempt(lambda: core.read_namespaced_secret("anything", NAMESPACE))
    assert secret.startswith("403"), secret


def test_handler_with_its_pod_token_writes_only_its_node(lab: RunningLab, scene: dict[str, str]) -> None:
    """The real thing: the token a handler pod on lab-host-1 gets names lab-host-1."""
    api = client_with(lab, token=handler_token(lab, scene["handler_pod"]))
    who = client.AuthenticationV1Api(api).create_self_subject_review(kube.body({})).status.user_info
    assert who.username == HANDLER and who.extra[NODE_CLAIM] == ["lab-host-1"]
    check_own_node_rule(api, scene["namespace"])


def test_handler_by_impersonation_with_the_node_claim(lab: RunningLab, scene: dict[str, str]) -> None:
    """The same rule by impersonation (Impersonate-Extra carries the claim), as an admin can check it."""
    headers = {
        "Impersonate-User": HANDLER,
        "Impersonate-Group": f"system:serviceaccounts:{VMCORE_NAMESPACE}",
        f"Impersonate-Extra-{NODE_CLAIM.replace('/', '%2F')}": "lab-host-1",
    }
    check_own_node_rule(client_with(lab, headers=headers), scene["namespace"])


def test_handler_credential_without_node_is_refused(lab: RunningLab, scene: dict[str, str]) -> None:
    api = client_with(lab, headers={"Impersonate-User": HANDLER})
    core = client.CoreV1Api(api)
    refused = attempt(
        lambda: core.patch_namespaced_pod(
            "mine", scene["namespace"], {"metadata": {"annotations": {"a": "b"}}}
        )
    )
    assert refused.startswith("422") and "names none" in refused, refused


def test_vmcore_controller_may_create_only_vm_pods(lab: RunningLab, scene: dict[str, str]) -> None:
    api = client_with(lab, headers={"Impersonate-User": VMCORE})
    core = client.CoreV1Api(api)

    def create(namespace: str, **changes: Any) -> str:
        spec: dict[str, Any] = {
            "automountServiceAccountToken": False,
            "containers": [{"name": "compute", "image": LAUNCHER}],
        }
        spec.update(changes.pop("spec", {}))
        labels = changes.pop("labels", {f"{V}/vm": "vm-1"})
        body = {"metadata": {"generateName": "vm-", "labels": labels}, "spec": spec}
        return attempt(lambda: core.create_namespaced_pod(namespace, kube.body(body), dry_run="All"))

    ns = scene["namespace"]
    assert create(ns) == "allowed"
    assert "only manage VM pods" in create(ns, labels={"app": "x"})
    assert "system namespace" in create(NAMESPACE)
    secret_volume = {"volumes": [{"name": "s", "secret": {"secretName": "bmc-worker-1"}}]}
    assert "only the launcher image" in create(ns, spec=secret_volume)
    assert "only the launcher image" in create(ns, spec={"containers": [{"name": "c", "image": "busybox"}]})
    assert "only the launcher image" in create(ns, spec={"hostNetwork": True})
