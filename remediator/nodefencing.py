"""The ``NodeFencing`` resource: how to fence one node, as an ordered list of fence levels.

``parse_node_fencing`` turns the object into a typed, validated :class:`NodeFencingSpec` (pure);
``read_node_fencing`` fetches it; ``open_level_driver`` reads a level's credentials Secret (from the
controller's namespace only) and builds the level's :class:`~remediator.fencing.PowerDriver`.
Credentials are kept in memory for the driver and never logged, evented or written to status.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from typing import Any, cast

from remediator.errors import ConfigError
from remediator.fencing import Credentials, PowerDriver, open_driver, parse_bmc_address

GROUP = "remediator.io"
VERSION = "v1alpha1"
PLURAL = "nodefencings"
CONTROLLER_NAMESPACE_DEFAULT = "remediator-system"
LEVEL_TYPES = ("redfish", "ipmi", "machineAPI")
MACHINE_ANNOTATION = "cluster.x-k8s.io/machine"


class NodeFencingNotFound(ConfigError):
    """The node has no NodeFencing: nobody said how to fence it."""

    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        super().__init__(f"node {node_name!r} has no NodeFencing (create one named like the node)")


class CredentialsNotFound(ConfigError):
    """A level's credentials Secret is missing, or lacks a key."""


@dataclass(frozen=True)
class FenceLevel:
    """One way of cutting a node's power, with its limits."""

    index: int
    type: str
    address: str | None = None
    credentials_secret: str | None = None
    insecure: bool = False
    redfish_auth: str = "basic"
    ipmi_legacy_sha1: bool = False
    call_timeout_s: float = 10.0
    power_timeout_s: float = 30.0
    attempts: int = 2
    machine_namespace: str | None = None
    machine_name: str | None = None

    def describe(self) -> str:
        """A one-line description for status, events and logs (never credentials)."""
        where = self.address if self.address else "the node's Machine"
        return f"level {self.index + 1} {self.type} {where}"


@dataclass(frozen=True)
class NodeFencingSpec:
    node_name: str
    levels: tuple[FenceLevel, ...]

    def summary(self) -> str:
        return ", ".join(level.type for level in self.levels)


def _number(raw: dict[str, Any], key: str, default: float, low: float, high: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.{key} must be a number, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key} must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


def parse_level(index: int, raw: Any, node_name: str) -> FenceLevel:
    where = f"NodeFencing {node_name}: spec.levels[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object")
    level_type = raw.get("type")
    if level_type not in LEVEL_TYPES:
        raise ConfigError(f"{where}.type must be one of {', '.join(LEVEL_TYPES)}, not {level_type!r}")
    address = raw.get("address")
    secret = raw.get("credentialsSecret")
    if level_type == "machineAPI":
        if address:
            raise ConfigError(f"{where}: a machineAPI level takes no address")
    else:
        if not isinstance(address, str) or not address:
            raise ConfigError(f"{where}.address is required for a {level_type} level")
        parsed = parse_bmc_address(address)
        if parsed.protocol != level_type:
            raise ConfigError(f"{where}: address {address!r} is not a {level_type} address")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{where}.credentialsSecret is required for a {level_type} level")
    auth = raw.get("redfishAuth", "basic")
    if auth not in ("basic", "session", "auto"):
        raise ConfigError(f"{where}.redfishAuth must be basic, session or auto, not {auth!r}")
    insecure = bool(raw.get("insecureSkipVerify", False))
    legacy = bool(raw.get("ipmiLegacySHA1", False))
    if insecure and level_type != "redfish":
        raise ConfigError(f"{where}.insecureSkipVerify applies to redfish levels only")
    if legacy and level_type != "ipmi":
        raise ConfigError(f"{where}.ipmiLegacySHA1 applies to ipmi levels only")
    attempts = raw.get("attempts", 2)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10:
        raise ConfigError(f"{where}.attempts must be an integer from 1 to 10, not {attempts!r}")
    return FenceLevel(
        index=index,
        type=level_type,
        address=address if level_type != "machineAPI" else None,
        credentials_secret=secret if isinstance(secret, str) and secret else None,
        insecure=insecure,
        redfish_auth=auth,
        ipmi_legacy_sha1=legacy,
        call_timeout_s=_number(raw, "callTimeoutSeconds", 10.0, 0.5, 120.0, where),
        power_timeout_s=_number(raw, "powerTimeoutSeconds", 30.0, 1.0, 900.0, where),
        attempts=attempts,
        machine_namespace=raw.get("machineNamespace"),
        machine_name=raw.get("machineName"),
    )


def parse_node_fencing(obj: dict[str, Any]) -> NodeFencingSpec:
    """A typed, validated spec from a NodeFencing object (as a dict). Raises ConfigError."""
    name = (obj.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("NodeFencing has no metadata.name")
    levels = (obj.get("spec") or {}).get("levels")
    if not isinstance(levels, list) or not levels:
        raise ConfigError(f"NodeFencing {name}: spec.levels must list at least one level")
    return NodeFencingSpec(name, tuple(parse_level(i, raw, name) for i, raw in enumerate(levels)))


def node_fencing_manifest(node_name: str, levels: list[dict[str, Any]]) -> dict[str, Any]:
    """A NodeFencing object for ``node_name`` with the given raw levels."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeFencing",
        "metadata": {"name": node_name},
        "spec": {"levels": levels},
    }


def read_node_fencing(api_client: Any, node_name: str) -> NodeFencingSpec:
    """Fetch and parse the node's NodeFencing; NodeFencingNotFound when there is none."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        obj = client.CustomObjectsApi(api_client).get_cluster_custom_object(GROUP, VERSION, PLURAL, node_name)
    except ApiException as exc:
        if exc.status == 404:
            raise NodeFencingNotFound(node_name) from exc
        raise
    return parse_node_fencing(cast(dict[str, Any], obj))


@dataclass(frozen=True)
class LevelSecret:
    credentials: Credentials
    ca_pem: bytes | None


def read_level_secret(api_client: Any, namespace: str, level: FenceLevel) -> LevelSecret:
    """The level's credentials from its Secret in ``namespace``. Never logs the values."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    name = level.credentials_secret
    if not name:
        raise CredentialsNotFound(f"{level.describe()} names no credentialsSecret")
    try:
        secret = client.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise CredentialsNotFound(
                f"{level.describe()}: Secret {namespace}/{name} does not exist"
            ) from exc
        raise
    data = secret.data or {}
    missing = [key for key in ("username", "password") if key not in data]
    if missing:
        raise CredentialsNotFound(f"{level.describe()}: Secret {namespace}/{name} lacks {', '.join(missing)}")

    def decode(key: str) -> bytes:
        return base64.b64decode(data[key])

    return LevelSecret(
        Credentials(decode("username").decode(), decode("password").decode()),
        decode("ca.crt") if "ca.crt" in data else None,
    )


def open_level_driver(level: FenceLevel, api_client: Any, namespace: str, node_name: str = "") -> PowerDriver:
    """The driver for one level, with its credentials read from ``namespace``."""
    if level.type == "machineAPI":
        from remediator.fencing.machineapi import MachineApiDriver

        return MachineApiDriver.for_node(
            api_client,
            node_name,
            machine_namespace=level.machine_namespace,
            machine_name=level.machine_name,
            timeout=level.call_timeout_s,
        )
    assert level.address is not None
    secret = read_level_secret(api_client, namespace, level)
    ca_file = None
    if secret.ca_pem is not None and level.type == "redfish":
        ca_file = _ca_bundle_file(secret.ca_pem)
    return open_driver(
        level.address,
        secret.credentials,
        timeout=level.call_timeout_s,
        ca_file=ca_file,
        insecure=level.insecure,
        redfish_auth=level.redfish_auth,
        ipmi_legacy_sha1=level.ipmi_legacy_sha1,
    )


_CA_FILES: dict[bytes, str] = {}


def _ca_bundle_file(pem: bytes) -> str:
    """A file holding ``pem`` (requests wants a path); one file per distinct bundle per process."""
    path = _CA_FILES.get(pem)
    if path is None or not os.path.exists(path):
        fd, path = tempfile.mkstemp(prefix="remediator-ca-", suffix=".crt")
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        _CA_FILES[pem] = path
    return path
