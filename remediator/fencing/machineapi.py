"""Machine API fence driver: fence a node by deleting its Cluster API ``Machine``.

A node that runs on a Cluster API ``Machine`` (``cluster.x-k8s.io``) has no BMC of ours to talk to: its
infrastructure provider (a cloud, Metal3, ...) owns the host. Deleting the Machine asks the provider to
release the host; the provider removes the Machine's finalizers once it has, and only then does the
Machine object disappear. :class:`MachineApiDriver` maps this onto the :class:`PowerDriver` interface:

Finding the Machine
    The node's ``cluster.x-k8s.io/machine`` annotation names the Machine; its namespace comes from the
    node's ``cluster.x-k8s.io/cluster-namespace`` annotation, or from ``machine_namespace``. An explicit
    ``machine_name`` (from the NodeFencing level) takes precedence over the annotation. No reference at
    all is a :class:`~remediator.errors.ConfigError`.

``power_off()``
    Reads the Machine, refuses (:class:`~remediator.errors.IdentityMismatch`) when its
    ``status.nodeRef`` or ``spec.providerID`` says it belongs to another node, and deletes it with a UID
    precondition: the request can only ever delete the very Machine that was read, never a replacement
    that reuses its name. It does not wait.

``power_state()``
    * ``ON`` while the Machine exists -- also while it carries a ``deletionTimestamp``: a Machine that is
      being torn down may still run its host.
    * ``OFF`` once a Machine that this driver *saw* is gone (the API answers NotFound, or the name now
      belongs to an object with another UID). That is the proof of fencing: the provider removed its
      finalizers, i.e. released the host.
    * A Machine that was never seen -- it never existed, the reference is wrong, or it vanished before
      this driver looked -- raises :class:`MachineNotFound`; a lookup that fails raises the wrapped API
      error. Neither is ever reported as ``OFF``. (A caller that resumes after a restart and knows the
      UID of the Machine it fenced passes it as ``machine_uid``, which makes NotFound count again.)
    * After the fence, ``ON`` again once the *replacement joined*: either a Node with the fenced node's
      name but another UID than the fenced Node is ``Ready`` (the old Node object was removed and a new
      one registered), or the Node is ``Ready`` and another, not-deleting Machine claims it in
      ``status.nodeRef`` (the name and the Node object were reused, e.g. a fixed host name). Until then
      ``OFF``. When the fenced Node's UID is unknown (no Node existed when the driver was built, or a
      resuming caller did not pass ``node_uid``) only the second kind of evidence counts.

``power_on()``
    A no-op request: the replacement is created by the Machine's owner (MachineSet, MachineDeployment,
    control plane provider) or by an operator, not by us. :func:`~remediator.fencing.verify.power_on_verified`
    then waits for the replacement as described above. Providers that give new hosts new node names
    never bring the fenced node name back; for them "on" is never read back and the remediation should
    delete the Node instead of waiting for power-on.

``identity()``
    The system UUID from the Machine's ``status.nodeInfo.systemUUID`` when the Machine carries it,
    otherwise unknown; a Machine whose ``status.nodeRef`` names another node raises IdentityMismatch.

Every API call has a ``_request_timeout`` and goes through a copy of the caller's client configuration
with urllib3's retries off, so one call takes at most the timeout. Kubernetes client errors are wrapped
into the error tree: connection failures -> :class:`BmcUnreachable`, timeouts -> :class:`BmcTimeout`,
HTTP 401/403 -> :class:`BmcAuthenticationFailed`, anything else -> :class:`BmcProtocolError`.
Descriptions and messages name the Machine and the node, never credentials (the API client's token
stays inside the client).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from remediator import kube
from remediator.errors import (
    BmcAuthenticationFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    ConfigError,
    FenceError,
    IdentityMismatch,
)
from remediator.fencing.base import DEFAULT_CALL_TIMEOUT, Identity, PowerState

log = logging.getLogger(__name__)

GROUP = "cluster.x-k8s.io"
VERSION = "v1beta1"
PLURAL = "machines"
MACHINE_ANNOTATION = "cluster.x-k8s.io/machine"
NAMESPACE_ANNOTATION = "cluster.x-k8s.io/cluster-namespace"


class MachineNotFound(FenceError):
    """The node's Machine does not exist and was never seen: nothing proves the host is released."""


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _node_ref(machine: dict[str, Any]) -> dict[str, Any]:
    ref = _status(machine).get("nodeRef")
    return ref if isinstance(ref, dict) else {}


def _node_ready(node: Any) -> bool:
    conditions = node.status.conditions if node.status and node.status.conditions else []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


class _KubeCalls:
    """API calls with a timeout each and kubernetes errors translated into the error tree."""

    def __init__(self, api_client: Any, label: str, node_name: str, timeout: float) -> None:
        if timeout <= 0:
            raise ConfigError("the machine API call timeout must be positive")
        from kubernetes import client

        api = _without_retries(api_client)
        self._core = client.CoreV1Api(api)
        self._custom = client.CustomObjectsApi(api)
        self._label = label
        self.node_name = node_name
        self._timeout = timeout

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        from kubernetes.client.exceptions import ApiException
        from urllib3 import exceptions as urllib3_exc

        try:
            yield
        except (FenceError, ConfigError):
            raise
        except ApiException as exc:
            raise self._api_error(what, exc) from exc
        except (urllib3_exc.HTTPError, OSError) as exc:
            raise self._transport_error(what, exc) from exc

    def _transport_error(self, what: str, exc: BaseException) -> FenceError:
        from urllib3 import exceptions as urllib3_exc

        cause = exc.reason if isinstance(exc, urllib3_exc.MaxRetryError) and exc.reason else exc
        # NewConnectionError derives from ConnectTimeoutError (urllib3 keeps that for compatibility).
        if isinstance(cause, urllib3_exc.TimeoutError | TimeoutError) and not isinstance(
            cause, urllib3_exc.NewConnectionError
        ):
            return BmcTimeout(f"{self._label}: {what}: no answer within {self._timeout:g}s")
        return BmcUnreachable(f"{self._label}: {what}: cannot reach the API server ({type(cause).__name__})")

    def _api_error(self, what: str, exc: Any) -> FenceError:
        status = int(exc.status or 0)
        detail = _status_message(exc.body) or str(exc.reason or "")
        if status == 0:
            return BmcUnreachable(f"{self._label}: {what}: cannot reach the API server ({detail})"[:500])
        if status in (401, 403):
            return BmcAuthenticationFailed(
                f"{self._label}: {what}: the API server refused the request (HTTP {status}: {detail})"[:500]
            )
        return BmcProtocolError(f"{self._label}: {what}: unexpected HTTP {status}: {detail}"[:500])

    def _call(self, what: str, fn: Callable[[], Any], *, missing_ok: bool = True) -> Any:
        """Run one API call with error translation; ``None`` for NotFound when ``missing_ok``."""
        from kubernetes.client.exceptions import ApiException

        with self._translate(what):
            try:
                return fn()
            except ApiException as exc:
                if missing_ok and exc.status == 404:
                    return None
                raise

    def _get_node(self) -> Any:
        return self._call(
            f"read node {self.node_name}",
            lambda: self._core.read_node(self.node_name, _request_timeout=self._timeout),
        )


class MachineApiDriver(_KubeCalls):
    """A :class:`~remediator.fencing.base.PowerDriver` that fences a node by deleting its Machine."""

    def __init__(
        self,
        api_client: Any,
        node_name: str,
        machine_namespace: str,
        machine_name: str,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        node_uid: str | None = None,
        node_provider_id: str | None = None,
        machine_uid: str | None = None,
    ) -> None:
        if not machine_namespace or not machine_name:
            raise ConfigError("a Machine reference needs both a namespace and a name")
        super().__init__(api_client, f"machineAPI {machine_namespace}/{machine_name}", node_name, timeout)
        self.machine_namespace = machine_namespace
        self.machine_name = machine_name
        #: UID of the Node object as it was before the fence (a replacement has another one).
        self._node_uid = node_uid
        self._node_provider_id = node_provider_id
        #: UID of the Machine this driver saw (or was told about); only its disappearance proves a fence.
        self._machine_uid = machine_uid
        self._gone = False

    @classmethod
    def for_node(
        cls,
        api_client: Any,
        node_name: str,
        *,
        machine_namespace: str | None = None,
        machine_name: str | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> MachineApiDriver:
        """The driver for ``node_name``'s Machine (explicit reference first, then the node's annotations).

        Reads the Node once (for its annotations, UID and provider ID). A missing Node is fine when the
        Machine is named explicitly; without any reference it is a :class:`ConfigError`.
        """
        if not node_name:
            raise ConfigError("the machine API driver needs the node's name")
        node = _KubeCalls(api_client, f"machineAPI node {node_name}", node_name, timeout)._get_node()
        annotations: dict[str, str] = {}
        node_uid = provider_id = None
        if node is not None:
            annotations = dict(node.metadata.annotations or {})
            node_uid = node.metadata.uid
            provider_id = node.spec.provider_id if node.spec else None
        name = machine_name or annotations.get(MACHINE_ANNOTATION)
        namespace = machine_namespace or annotations.get(NAMESPACE_ANNOTATION)
        if not name:
            where = "has no" if node is not None else "does not exist, so there is no"
            raise ConfigError(
                f"node {node_name} {where} {MACHINE_ANNOTATION} annotation and the machineAPI level names "
                "no Machine (set machineNamespace and machineName)"
            )
        if not namespace:
            raise ConfigError(
                f"node {node_name}: Machine {name} has no namespace (no {NAMESPACE_ANNOTATION} annotation "
                "and no machineNamespace)"
            )
        return cls(
            api_client,
            node_name,
            namespace,
            name,
            timeout=timeout,
            node_uid=node_uid,
            node_provider_id=provider_id,
        )

    # --- description ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._label

    def describe(self) -> str:
        return (
            f"{self.name} ({GROUP}/{VERSION} Machine of node {self.node_name}, fenced by deleting it, "
            f"timeout {self._timeout:g}s)"
        )

    def __repr__(self) -> str:
        return f"MachineApiDriver({self.describe()})"

    @property
    def machine_uid(self) -> str | None:
        """UID of the Machine this driver saw; a caller that resumes later passes it back in."""
        return self._machine_uid

    # --- API calls ---------------------------------------------------------------------------

    def _get_machine(self) -> dict[str, Any] | None:
        doc = self._call(
            "read Machine",
            lambda: self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self.machine_namespace, PLURAL, self.machine_name,
                _request_timeout=self._timeout,
            ),
        )  # fmt: skip
        if doc is not None and not isinstance(doc, dict):
            raise BmcProtocolError(f"{self.name}: read Machine: the API server answered a non-object")
        return doc

    def _list_machines(self) -> list[dict[str, Any]]:
        doc = self._call(
            "list Machines",
            lambda: self._custom.list_namespaced_custom_object(
                GROUP, VERSION, self.machine_namespace, PLURAL, _request_timeout=self._timeout
            ),
            missing_ok=False,
        )
        items = doc.get("items") if isinstance(doc, dict) else None
        return [m for m in items or [] if isinstance(m, dict)]

    # --- state ---------------------------------------------------------------------------------

    def _mark_gone(self, how: str) -> None:
        if not self._gone:
            log.info(
                "%s: %s: the provider released the host (node %s fenced)", self.name, how, self.node_name
            )
        self._gone = True

    def _observe(self, machine: dict[str, Any] | None) -> bool:
        """Record what one read of the Machine shows; True when it still exists (our Machine)."""
        if machine is None:
            if self._machine_uid is None:
                raise MachineNotFound(
                    f"{self.name}: node {self.node_name}'s Machine does not exist (and was never seen); "
                    "refusing to count a failed lookup as fenced"
                )
            self._mark_gone("the Machine is gone")
            return False
        uid = _meta(machine).get("uid")
        if self._machine_uid is not None and uid != self._machine_uid:
            self._mark_gone("the Machine is gone (its name now belongs to a new Machine)")
            return False
        if uid is None:
            raise BmcProtocolError(f"{self.name}: read Machine: the object has no metadata.uid")
        self._machine_uid = str(uid)
        return True

    def _check_belongs_to_node(self, machine: dict[str, Any]) -> None:
        ref_name = _node_ref(machine).get("name")
        if ref_name and ref_name != self.node_name:
            raise IdentityMismatch(
                f"{self.name}: the Machine's status.nodeRef names node {ref_name}, not {self.node_name}; "
                "refusing to act on the wrong machine"
            )
        spec = machine.get("spec") if isinstance(machine.get("spec"), dict) else {}
        machine_pid = spec.get("providerID") if isinstance(spec, dict) else None
        if machine_pid and self._node_provider_id and machine_pid != self._node_provider_id:
            raise IdentityMismatch(
                f"{self.name}: the Machine's providerID {machine_pid} differs from node {self.node_name}'s "
                f"{self._node_provider_id}; refusing to act on the wrong machine"
            )

    def _replacement_joined(self) -> bool:
        node = self._get_node()
        if node is None or not _node_ready(node):
            return False
        uid = node.metadata.uid
        if self._node_uid is not None and uid != self._node_uid:
            return True
        for machine in self._list_machines():
            meta = _meta(machine)
            ref = _node_ref(machine)
            if (
                meta.get("uid") != self._machine_uid
                and not meta.get("deletionTimestamp")
                and ref.get("name") == self.node_name
                and ref.get("uid") in (None, uid)
            ):
                return True
        return False

    # --- PowerDriver ---------------------------------------------------------------------------

    def power_state(self) -> PowerState:
        if not self._gone and self._observe(self._get_machine()):
            return PowerState.ON
        return PowerState.ON if self._replacement_joined() else PowerState.OFF

    def power_off(self) -> None:
        if self._gone:
            return
        machine = self._get_machine()
        if not self._observe(machine):
            return
        assert machine is not None
        self._check_belongs_to_node(machine)
        node = self._get_node()
        if node is not None:
            self._node_uid = node.metadata.uid
        if _meta(machine).get("deletionTimestamp"):
            log.info("%s: already being deleted", self.name)
            return
        outcome = self._delete_machine(str(self._machine_uid))
        if outcome == "gone":
            self._mark_gone("the Machine is gone")
        elif outcome == "replaced":
            self._mark_gone("the Machine is gone (its name now belongs to a new Machine)")
        else:
            log.info(
                "%s: Machine deleted (node %s); waiting for the provider to release it",
                self.name,
                self.node_name,
            )

    def _delete_machine(self, uid: str) -> str:
        """Delete the Machine if it still has ``uid``: ``deleted``, ``gone`` (404) or ``replaced``."""
        from kubernetes.client.exceptions import ApiException

        options = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"}
        with self._translate("delete Machine"):
            try:
                self._custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.machine_namespace, PLURAL, self.machine_name,
                    body=kube.body(options), _request_timeout=self._timeout,
                )  # fmt: skip
            except ApiException as exc:
                if exc.status == 404:
                    return "gone"
                if exc.status == 409:  # the UID precondition failed: the name belongs to a new Machine
                    return "replaced"
                raise
        return "deleted"

    def power_on(self) -> None:
        log.info(
            "%s: power on requested: nothing to send; the Machine's owner creates the replacement", self.name
        )

    def identity(self) -> Identity:
        machine = self._get_machine()
        if not self._observe(machine):
            return Identity()
        assert machine is not None
        self._check_belongs_to_node(machine)
        info = _status(machine).get("nodeInfo")
        system_uuid = info.get("systemUUID") if isinstance(info, dict) else None
        return Identity(system_uuid=system_uuid if isinstance(system_uuid, str) else None)

    def close(self) -> None:
        """Nothing to release: the API client belongs to the caller."""


def _without_retries(api_client: Any) -> Any:
    """A client like ``api_client`` whose requests are not retried by urllib3.

    urllib3 retries a failed or timed-out request three times by default, which would turn the call
    timeout into four times the call timeout; the caller (:mod:`remediator.fencing.verify`) owns retrying.
    """
    from kubernetes import client

    configuration = copy.deepcopy(api_client.configuration)
    configuration.retries = 0
    # Newer clients can also retry reads client-go style (with Retry-After sleeps): not here either.
    configuration.client_go_retries = False
    return client.ApiClient(configuration)


def _status_message(body: Any) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, if the body is one."""
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        return ""
    message = doc.get("message") if isinstance(doc, dict) else None
    return str(message) if message else ""
