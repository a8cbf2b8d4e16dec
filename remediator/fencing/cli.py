"""``remediator bmc ...``: read and change a host's power by hand, with the controller's own drivers.

    remediator bmc status   ADDRESS     read the power state
    remediator bmc off      ADDRESS     hard power-off, exit 0 only once OFF was read back
    remediator bmc on       ADDRESS     power on, exit 0 only once ON was read back
    remediator bmc reboot   ADDRESS     off (verified), then on (verified)
    remediator bmc identify ADDRESS     print the system UUID and serial the BMC reports
    remediator bmc check --node NODE    validate every fence level of the node's NodeFencing

The password comes from ``--password-file`` or ``$REMEDIATOR_BMC_PASSWORD``, never from argv. Errors are
raised as :class:`~remediator.errors.RemediatorError` s; ``remediator.cli`` prints them as one line.

``check --node`` reads the node and its ``NodeFencing`` from the cluster and, for each level in order,
checks its credentials Secret, that the endpoint answers, that it accepts the credentials (by *reading*
the power state: power is never changed) and that the system it reports is the node's
(``status.nodeInfo.systemUUID``). It prints one report per level, records the outcome as the
NodeFencing's ``Checked`` condition (unless ``--no-record``), and exits 0 only when every level passed.
Passwords read from Secrets are scrubbed from everything it prints or records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remediator.errors import BmcAuthenticationFailed, ConfigError, IdentityMismatch, RemediatorError
from remediator.fencing import open_driver
from remediator.fencing.base import Credentials, PowerDriver, PowerState, normalize_uuid
from remediator.fencing.verify import (
    DEFAULT_OPERATION_TIMEOUT,
    PowerResult,
    check_identity,
    power_off_verified,
    power_on_verified,
    reboot_verified,
)
from remediator.nodefencing import (
    CONTROLLER_NAMESPACE_DEFAULT,
    CredentialsNotFound,
    FenceLevel,
    open_level_driver,
    read_level_secret,
    read_node_fencing,
)
from remediator.nodefencing import GROUP as NF_GROUP
from remediator.nodefencing import PLURAL as NF_PLURAL
from remediator.nodefencing import VERSION as NF_VERSION

PASSWORD_ENV = "REMEDIATOR_BMC_PASSWORD"  # noqa: S105 - the name of a variable
USERNAME_ENV = "REMEDIATOR_BMC_USERNAME"
#: Upper bound for one request to the BMC; the operation as a whole gets ``--timeout``.
MAX_CALL_TIMEOUT = 10.0

Handler = Callable[[PowerDriver, argparse.Namespace], tuple[int, dict[str, Any], str]]


def register(groups: Any) -> None:
    """Add the ``bmc`` command group to the ``remediator`` parser's subparsers."""
    bmc = groups.add_parser("bmc", help="read and change a host's power through its BMC (Redfish or IPMI)")
    commands = bmc.add_subparsers(dest="bmc_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("status", _status, "read the power state"),
        ("off", _off, "hard power-off; succeeds only when OFF is read back"),
        ("on", _on, "power on; succeeds only when ON is read back"),
        ("reboot", _reboot, "power off (verified), then on (verified)"),
        ("identify", _identify, "print the system UUID and serial number the BMC reports"),
    ):
        parser = commands.add_parser(name, help=text, description=text)
        _add_common_arguments(parser)
        parser.set_defaults(command=_runner(handler))
    text = "validate every fence level of a node's NodeFencing without touching power"
    check = commands.add_parser("check", help=text, description=text)
    check.add_argument("--node", required=True, help="the node (and NodeFencing) name")
    check.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    check.add_argument(
        "--namespace",
        default=CONTROLLER_NAMESPACE_DEFAULT,
        help=f"namespace of the credentials Secrets (default: {CONTROLLER_NAMESPACE_DEFAULT})",
    )
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.add_argument(
        "--no-record", action="store_true", help="do not record the result in the NodeFencing's status"
    )
    check.set_defaults(command=_check_command)


def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        metavar="ADDRESS",
        help="redfish://host[:port][/redfish/v1/Systems/ID], redfish+http://..., or ipmi://host[:port]",
    )
    parser.add_argument(
        "--username", default=os.environ.get(USERNAME_ENV), help=f"BMC user (or ${USERNAME_ENV})"
    )
    parser.add_argument(
        "--password-file", type=Path, help=f"file holding the BMC password (default: ${PASSWORD_ENV})"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_OPERATION_TIMEOUT, help="seconds for the whole action"
    )
    parser.add_argument("--expect-uuid", help="refuse to act unless the BMC reports this system UUID")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    tls = parser.add_argument_group("Redfish")
    tls.add_argument("--ca-file", help="CA bundle that signed the BMC's certificate")
    tls.add_argument("--insecure", action="store_true", help="do not verify the BMC's TLS certificate")
    tls.add_argument("--redfish-auth", choices=("basic", "session", "auto"), default="basic")
    ipmi = parser.add_argument_group("IPMI")
    ipmi.add_argument(
        "--ipmi-legacy-sha1",
        action="store_true",
        help="propose SHA-1 authentication/integrity (needed by virtualbmc and other pyghmi-based BMCs)",
    )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        try:
            text = Path(args.password_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {args.password_file}: {exc.strerror}") from exc
        password = text.splitlines()[0] if text else ""
    else:
        password = os.environ.get(PASSWORD_ENV, "")
    if not password:
        raise ConfigError(f"no BMC password: give --password-file or set ${PASSWORD_ENV}")
    return password


def _runner(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.username:
            raise ConfigError(f"no BMC user: give --username or set ${USERNAME_ENV}")
        if args.timeout <= 0:
            raise ConfigError("--timeout must be positive")
        driver = open_driver(
            args.address,
            Credentials(args.username, _read_password(args)),
            timeout=min(MAX_CALL_TIMEOUT, args.timeout),
            ca_file=args.ca_file,
            insecure=args.insecure,
            redfish_auth=args.redfish_auth,
            ipmi_legacy_sha1=args.ipmi_legacy_sha1,
        )
        try:
            if args.expect_uuid and args.bmc_command != "identify":
                check_identity(driver, args.expect_uuid)
            status, doc, line = handler(driver, args)
        finally:
            driver.close()
        doc = {"address": driver.name.split(" ", 1)[1], **doc}
        print(json.dumps(doc, sort_keys=True) if args.json else line)
        return status

    return run


def _result(driver: PowerDriver, result: PowerResult) -> tuple[int, dict[str, Any], str]:
    if result.command_sent:
        took = f"read back after {result.elapsed:.3f}s, {result.polls} reads"
        line = f"{driver.name}: {result.state.value} ({took})"
    else:
        line = f"{driver.name}: already {result.state.value}, no command sent"
    return 0, result.as_dict(), line


def _status(driver: PowerDriver, args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    state = driver.power_state()
    return (1 if state is PowerState.UNKNOWN else 0), {"state": state.value}, f"{driver.name}: {state.value}"


def _off(driver: PowerDriver, args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    return _result(driver, power_off_verified(driver, args.timeout))


def _on(driver: PowerDriver, args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    return _result(driver, power_on_verified(driver, args.timeout))


def _reboot(driver: PowerDriver, args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    return _result(driver, reboot_verified(driver, args.timeout))


def _identify(driver: PowerDriver, args: argparse.Namespace) -> tuple[int, dict[str, Any], str]:
    identity = check_identity(driver, args.expect_uuid)
    doc = {"system_uuid": identity.system_uuid, "serial": identity.serial}
    line = f"{driver.name}: uuid {identity.system_uuid or 'unknown'}, serial {identity.serial or 'unknown'}"
    return 0, doc, line


# --- bmc check --node ----------------------------------------------------------------------------

#: The checks of one level, in order. A failed check skips the ones after it.
CHECK_STEPS = ("credentials", "reachable", "login", "identity")
_STEP_TEXT = {
    "credentials": "credentials Secret",
    "reachable": "endpoint answers",
    "login": "credentials accepted",
    "identity": "identity",
}
_REDACTED = "<redacted>"


@dataclass
class LevelReport:
    """What checking one fence level found. ``steps`` maps each of CHECK_STEPS to a verdict."""

    index: int
    type: str
    target: str
    steps: dict[str, str] = field(default_factory=lambda: dict.fromkeys(CHECK_STEPS, "skipped"))
    notes: dict[str, str] = field(default_factory=dict)
    power: str | None = None
    system_uuid: str | None = None
    error: str | None = None
    error_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(v in ("ok", "unverified", "n/a") for v in self.steps.values())

    @property
    def label(self) -> str:
        return f"level {self.index + 1} {self.type} {self.target}"

    def fail(self, step: str, exc: BaseException, secrets: list[str]) -> None:
        self.steps[step] = "failed"
        status = getattr(exc, "status", None)
        text = f"the API server answered HTTP {status} ({getattr(exc, 'reason', '')})" if status else str(exc)
        self.error = _scrub(text or type(exc).__name__, secrets)
        self.error_type = type(exc).__name__

    def as_dict(self) -> dict[str, Any]:
        return {
            "level": self.index + 1,
            "type": self.type,
            "target": self.target,
            "ok": self.ok,
            "steps": dict(self.steps),
            "notes": dict(self.notes),
            "power": self.power,
            "system_uuid": self.system_uuid,
            "error": self.error,
            "error_type": self.error_type,
        }


@dataclass
class NodeReport:
    node: str
    namespace: str
    node_system_uuid: str | None
    levels: list[LevelReport]

    @property
    def ok(self) -> bool:
        return bool(self.levels) and all(level.ok for level in self.levels)

    def summary(self) -> str:
        failed = [level for level in self.levels if not level.ok]
        if not failed:
            return f"all {len(self.levels)} fence levels passed"
        parts = []
        for level in failed:
            step = next((s for s in CHECK_STEPS if level.steps[s] == "failed"), "check")
            parts.append(f"level {level.index + 1} {level.type}: {_STEP_TEXT.get(step, step)} failed")
        return f"{len(failed)} of {len(self.levels)} fence levels failed: {'; '.join(parts)}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "namespace": self.namespace,
            "node_system_uuid": self.node_system_uuid,
            "ok": self.ok,
            "summary": self.summary(),
            "levels": [level.as_dict() for level in self.levels],
        }

    def text(self) -> str:
        uuid_text = self.node_system_uuid or "unknown"
        lines = [
            f"node {self.node} (systemUUID {uuid_text}): {len(self.levels)} fence level(s), "
            f"credentials from namespace {self.namespace}"
        ]
        for level in self.levels:
            lines.append(f"{level.label}: {'PASS' if level.ok else 'FAIL'}")
            for step in CHECK_STEPS:
                verdict = level.steps[step]
                shown = "FAILED" if verdict == "failed" else verdict
                note = level.notes.get(step, "")
                if verdict == "failed" and level.error:
                    note = level.error
                lines.append(f"    {_STEP_TEXT[step]:<22} {shown:<10} {note}".rstrip())
            if level.power is not None:
                lines.append(f"    {'power (read only)':<22} {level.power}")
        lines.append(f"result: {'PASS' if self.ok else 'FAIL'} ({self.summary()})")
        return "\n".join(lines)


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def _kubeconfig(path: Path | None) -> Path | None:
    if path is not None:
        return path
    env = os.environ.get("KUBECONFIG", "")
    first = env.split(os.pathsep)[0] if env else ""
    if first:
        return Path(first)
    default = Path.home() / ".kube" / "config"
    return default if default.exists() else None


def _api_client(path: Path | None) -> Any:
    from kubernetes.config.config_exception import ConfigException

    from remediator import kube

    try:
        return kube.api_client(_kubeconfig(path))
    except ConfigException as exc:
        raise ConfigError(f"no cluster to talk to ({exc}); give --kubeconfig") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read the kubeconfig: {exc.strerror}") from exc


def _cluster_error(what: str, exc: BaseException) -> RemediatorError:
    """A kubernetes client error as one clear line (status and reason only)."""
    status = getattr(exc, "status", None)
    if status:
        return RemediatorError(
            f"{what}: the API server answered HTTP {status} ({getattr(exc, 'reason', '')})"
        )
    return RemediatorError(f"{what}: cannot reach the API server ({type(exc).__name__})")


def check_level(
    api: Any, level: FenceLevel, namespace: str, node: str, node_uuid: str | None, secrets: list[str]
) -> LevelReport:
    """Check one fence level: its Secret, reachability, credentials and identity. Never changes power."""
    from kubernetes.client.exceptions import ApiException

    report = LevelReport(level.index, level.type, level.address or "(the node's Machine)")
    step = "credentials"
    try:
        if level.type == "machineAPI":
            report.steps["credentials"] = "n/a"
            report.notes["credentials"] = "uses the API server's credentials"
        else:
            try:
                secret = read_level_secret(api, namespace, level)
            except ApiException as exc:
                raise CredentialsNotFound(
                    f"{level.describe()}: cannot read Secret {namespace}/{level.credentials_secret} "
                    f"(HTTP {exc.status} {exc.reason})"
                ) from exc
            secrets.append(secret.credentials.password)
            report.steps["credentials"] = "ok"
            report.notes["credentials"] = f"Secret {namespace}/{level.credentials_secret}"
        step = "reachable"
        driver = open_level_driver(level, api, namespace, node)
        try:
            report.target = driver.name.split(" ", 1)[1] if " " in driver.name else driver.name
            try:
                report.power = driver.power_state().value
            except BmcAuthenticationFailed:
                report.steps["reachable"] = "ok"
                step = "login"
                raise
            report.steps["reachable"] = report.steps["login"] = "ok"
            report.notes["reachable"] = driver.describe()
            step = "identity"
            identity = driver.identity()
            report.system_uuid = identity.system_uuid
            if identity.uuid_matches(node_uuid) is False:
                raise IdentityMismatch(
                    f"{driver.name} reports system UUID {identity.system_uuid}, but node {node} has "
                    f"systemUUID {normalize_uuid(node_uuid)}: this level would refuse to fence the node"
                )
            if identity.uuid_matches(node_uuid):
                report.steps["identity"] = "ok"
                report.notes["identity"] = f"system UUID {identity.system_uuid} matches the node"
            else:
                report.steps["identity"] = "unverified"
                report.notes["identity"] = (
                    "the node has no systemUUID to compare with"
                    if node_uuid is None
                    else "the endpoint reports no system UUID"
                )
        finally:
            driver.close()
    except (RemediatorError, ApiException) as exc:
        report.fail(step, exc, secrets)
    return report


def check_node(api: Any, node: str, namespace: str) -> tuple[NodeReport, list[str]]:
    """Check every level of ``node``'s NodeFencing; returns the report and the passwords seen."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from remediator import kube

    try:
        node_obj = client.CoreV1Api(api).read_node(node, _request_timeout=MAX_CALL_TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(f"node {node!r} does not exist") from exc
        raise _cluster_error(f"read node {node}", exc) from exc
    except HTTPError as exc:
        raise _cluster_error(f"read node {node}", exc) from exc
    try:
        spec = read_node_fencing(api, node)
    except (ApiException, HTTPError) as exc:
        raise _cluster_error(f"read NodeFencing {node}", exc) from exc
    node_uuid = kube.node_system_uuid(node_obj)
    secrets: list[str] = []
    levels = [check_level(api, level, namespace, node, node_uuid, secrets) for level in spec.levels]
    return NodeReport(node, namespace, node_uuid, levels), secrets


def record_check(api: Any, report: NodeReport, secrets: list[str]) -> None:
    """Write the outcome as the NodeFencing's ``Checked`` condition (and its level summary)."""
    import datetime

    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    obj: dict[str, Any] = custom.get_cluster_custom_object(  # type: ignore[assignment]
        NF_GROUP, NF_VERSION, NF_PLURAL, report.node, _request_timeout=MAX_CALL_TIMEOUT
    )
    status = obj.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Checked"]
    previous = next((c for c in status.get("conditions") or [] if c.get("type") == "Checked"), None)
    new_status = "True" if report.ok else "False"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    changed = previous is None or previous.get("status") != new_status
    conditions.append(
        {
            "type": "Checked",
            "status": new_status,
            "reason": "AllLevelsPassed" if report.ok else "LevelFailed",
            "message": _scrub(report.summary(), secrets)[:1024],
            "lastTransitionTime": now if changed else previous["lastTransitionTime"],  # type: ignore[index]
            "observedGeneration": obj.get("metadata", {}).get("generation", 0),
        }
    )
    summary = ", ".join(level.type for level in report.levels)
    custom.patch_cluster_custom_object_status(
        NF_GROUP, NF_VERSION, NF_PLURAL, report.node,
        {"status": {"summary": summary, "conditions": conditions}},
        _request_timeout=MAX_CALL_TIMEOUT,
    )  # fmt: skip


def _check_command(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api = _api_client(args.kubeconfig)
    report, secrets = check_node(api, args.node, args.namespace)
    if not args.no_record:
        try:
            record_check(api, report, secrets)
        except (ApiException, HTTPError) as exc:
            print(
                f"remediator: warning: {_cluster_error('recording the result in the NodeFencing', exc)}",
                file=sys.stderr,
            )
    if args.json:
        print(_scrub(json.dumps(report.as_dict(), sort_keys=True), secrets))
    else:
        print(_scrub(report.text(), secrets))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run only the ``bmc`` group (handy while the full ``remediator`` CLI is being assembled)."""
    parser = argparse.ArgumentParser(prog="remediator")
    register(parser.add_subparsers(dest="group", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.command(args))
    except RemediatorError as exc:
        print(f"remediator: error: {exc}", file=sys.stderr)
        return 1
