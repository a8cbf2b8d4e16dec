"""``remediator vm list|start|stop|migrate``: the operator's command for vmcore VMs (like ``virtctl``).

* ``list`` shows every VM of a namespace (or all, ``-A``): phase, node, readiness, whether it can
  move live, and the migration in progress.
* ``start``/``stop`` follow the VM's runStrategy: a ``Manual`` or ``RerunOnFailure`` VM gets a request
  (the ``requested-state`` annotation the controller consumes); an ``Always`` VM is stopped by setting
  ``runStrategy: Halted`` and a ``Halted`` one started by setting ``Always`` (as virtctl does).
* ``migrate`` creates a VirtualMachineMigration (``--to NODE`` asks for a node; the scheduler still
  checks that the VM fits there).

With ``--wait`` each command follows the VM (or the migration) and shows progress; it exits
non-zero when the VM fails or the migration fails, or at ``--timeout``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from remediator.errors import ConfigError, RemediatorError
from remediator.progress import ProgressLine
from vmcore import api as vapi


class VmCommandFailed(RemediatorError):
    """The VM or its migration ended in failure (or --wait ran out of time)."""


def register(groups: Any) -> None:
    vm = groups.add_parser("vm", help="list, start, stop and live-migrate vmcore VMs")
    commands = vm.add_subparsers(dest="vm_command", metavar="VM_COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text)
        parser.add_argument(
            "-n", "--namespace", default="default", help="the VMs' namespace (default: default)"
        )
        parser.add_argument(
            "--kubeconfig", type=Path, help="kubeconfig (default: $KUBECONFIG, the lab's, ~/.kube/config)"
        )
        parser.set_defaults(command=handler)
        return parser

    listing = add("list", cmd_list, "list VMs with their phase, node and migration")
    listing.add_argument("-A", "--all-namespaces", action="store_true", help="VMs of every namespace")
    for name, handler, text in (
        ("start", cmd_start, "start a VM (follows its runStrategy)"),
        ("stop", cmd_stop, "stop a VM (follows its runStrategy)"),
        ("migrate", cmd_migrate, "move a running VM live to another node"),
    ):
        parser = add(name, handler, text)
        parser.add_argument("name", help="the VirtualMachine")
        parser.add_argument(
            "--wait", action="store_true", help="follow it until done; non-zero exit on failure"
        )
        parser.add_argument("--timeout", type=float, default=300.0, help="seconds --wait waits (default 300)")
        if name == "migrate":
            parser.add_argument(
                "--to", metavar="NODE", help="the target node (default: the scheduler's choice)"
            )
            parser.add_argument(
                "--completion-timeout",
                type=int,
                default=None,
                metavar="SECONDS",
                help="abort the transfer after this long (the VM stays on its node; default 60)",
            )


def _apis(args: argparse.Namespace) -> Any:
    from kubernetes import client

    from remediator import kube
    from remediator.controller_cli import resolve_kubeconfig

    return client.CustomObjectsApi(kube.api_client(resolve_kubeconfig(args.kubeconfig)))


def _get_vm(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes.client.exceptions import ApiException

    try:
        vm: Any = api.get_namespaced_custom_object(vapi.GROUP, vapi.VERSION, namespace, vapi.VM_PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(f"no VirtualMachine {namespace}/{name}") from exc
        raise
    return dict(vm)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


def vm_row(vm: Mapping[str, Any]) -> dict[str, str]:
    """One line of ``vm list`` (also what the lab's status prints)."""
    status = vm.get("status") or {}
    ready, movable = _condition(status, "Ready"), _condition(status, "LiveMigratable")
    migration = status.get("activeMigration") or {}
    return {
        "namespace": str(vm["metadata"]["namespace"]),
        "name": str(vm["metadata"]["name"]),
        "phase": str(status.get("phase") or "-"),
        "node": str(status.get("nodeName") or "-"),
        "ready": f"{ready.get('status', '-')}" + (f" ({ready['reason']})" if ready.get("reason") else ""),
        "liveMigratable": str(movable.get("status", "-"))
        + (f" ({movable['reason']})" if movable.get("status") == "False" else ""),
        "migration": str(migration.get("name") or "-"),
        "restarts": str(status.get("restarts", 0)),
    }


def cmd_list(args: argparse.Namespace) -> int:
    api = _apis(args)
    if args.all_namespaces:
        listed: Any = api.list_cluster_custom_object(vapi.GROUP, vapi.VERSION, vapi.VM_PLURAL)
    else:
        listed = api.list_namespaced_custom_object(vapi.GROUP, vapi.VERSION, args.namespace, vapi.VM_PLURAL)
    rows = [vm_row(vm) for vm in listed.get("items", [])]
    if not rows:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No VirtualMachines in {where}.")
        return 0
    columns = ["namespace"] if args.all_namespaces else []
    columns += ["name", "phase", "node", "ready", "liveMigratable", "restarts", "migration"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for row in sorted(rows, key=lambda r: (r["namespace"], r["name"])):
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
    return 0


def _request(api: Any, namespace: str, name: str, run_strategy: str, wanted: str) -> str:
    """Ask for ``wanted`` ("Running" or "Stopped") the way the VM's runStrategy takes it; returns what
    was done, for the user."""
    if run_strategy in ("Manual", "RerunOnFailure"):
        patch: dict[str, Any] = {"metadata": {"annotations": {vapi.ANN_REQUESTED_STATE: wanted}}}
        done = f"requested {wanted.lower()}"
    else:
        strategy = "Always" if wanted == "Running" else "Halted"
        patch = {"spec": {"runStrategy": strategy}}
        done = f"runStrategy set to {strategy}"
    api.patch_namespaced_custom_object(vapi.GROUP, vapi.VERSION, namespace, vapi.VM_PLURAL, name, patch)
    return done


def _wait_vm(api: Any, args: argparse.Namespace, done: Callable[[Mapping[str, Any]], bool]) -> int:
    progress = ProgressLine(min_interval=5.0)
    deadline = time.monotonic() + args.timeout
    last = ""
    try:
        while True:
            vm = _get_vm(api, args.namespace, args.name)
            status = vm.get("status") or {}
            ready = _condition(status, "Ready")
            line = f"{args.name}: {status.get('phase') or 'Pending'} -- {ready.get('message') or ''}".rstrip(
                " -"
            )
            if line != last:
                progress(line)
                last = line
            if done(status):
                progress(line, keep=True)
                return 0
            if status.get("phase") == "Failed":
                progress(line, keep=True)
                raise VmCommandFailed(f"{args.name} failed: {ready.get('reason')}: {ready.get('message')}")
            if time.monotonic() >= deadline:
                raise VmCommandFailed(f"{args.name} not done after {args.timeout:g}s ({line})")
            time.sleep(0.2)
    finally:
        progress.done()


def cmd_start(args: argparse.Namespace) -> int:
    api = _apis(args)
    vm = _get_vm(api, args.namespace, args.name)
    status = vm.get("status") or {}
    if status.get("phase") == "Running" and _condition(status, "Ready").get("status") == "True":
        print(f"{args.namespace}/{args.name} already runs on {status.get('nodeName')}.")
        return 0
    done = _request(api, args.namespace, args.name, str(vm["spec"].get("runStrategy", "Always")), "Running")
    print(f"{args.namespace}/{args.name}: {done}.")
    if args.wait:
        return _wait_vm(
            api,
            args,
            lambda s: s.get("phase") == "Running" and _condition(s, "Ready").get("status") == "True",
        )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    api = _apis(args)
    vm = _get_vm(api, args.namespace, args.name)
    done = _request(api, args.namespace, args.name, str(vm["spec"].get("runStrategy", "Always")), "Stopped")
    print(f"{args.namespace}/{args.name}: {done}.")
    if args.wait:
        return _wait_vm(api, args, lambda s: s.get("phase") == "Stopped" and not s.get("domains"))
    return 0


def migration_line(name: str, status: Mapping[str, Any]) -> str:
    phase = status.get("phase") or "Pending"
    mib = int(status.get("transferredBytes", 0)) / 2**20
    parts = [f"{name}: {phase}"]
    if status.get("sourceNode"):
        parts.append(f"{status['sourceNode']} -> {status.get('targetNode') or '?'}")
    if phase == "Running":
        parts.append(f"{status.get('progress', 0)}%, {mib:.1f} MiB sent")
    if phase == "Succeeded":
        parts.append(f"downtime {status.get('downtimeMs', '?')} ms, {mib:.1f} MiB sent")
    if phase == "Failed":
        parts.append(f"{status.get('failureReason')}: {status.get('message', '')}")
    elif status.get("message") and phase not in ("Running", "Succeeded"):
        parts.append(str(status["message"]))
    return " -- ".join(parts)


def cmd_migrate(args: argparse.Namespace) -> int:
    api = _apis(args)
    vm = _get_vm(api, args.namespace, args.name)
    name = f"{args.name}-{uuid.uuid4().hex[:6]}"[-63:].lstrip("-")
    spec: dict[str, Any] = {"vmName": args.name, "reason": "remediator vm migrate"}
    if args.to:
        spec["targetNode"] = args.to
    if args.completion_timeout is not None:
        spec["completionTimeoutSeconds"] = args.completion_timeout
    body = {
        "apiVersion": vapi.API_VERSION,
        "kind": vapi.MIGRATION_KIND,
        "metadata": {"name": name, "namespace": args.namespace, "labels": {vapi.LABEL_VM: args.name}},
        "spec": spec,
    }
    api.create_namespaced_custom_object(vapi.GROUP, vapi.VERSION, args.namespace, vapi.MIGRATION_PLURAL, body)
    node = (vm.get("status") or {}).get("nodeName") or "?"
    print(f"VirtualMachineMigration {args.namespace}/{name} created ({args.name} on {node}).")
    if not args.wait:
        return 0
    progress = ProgressLine(min_interval=5.0)
    deadline = time.monotonic() + args.timeout
    last = ""
    try:
        while True:
            mig: Any = api.get_namespaced_custom_object(
                vapi.GROUP, vapi.VERSION, args.namespace, vapi.MIGRATION_PLURAL, name
            )
            status = mig.get("status") or {}
            line = migration_line(name, status)
            if line != last:
                progress(line, keep=status.get("phase") in ("Succeeded", "Failed"))
                last = line
            if status.get("phase") == "Succeeded":
                return 0
            if status.get("phase") == "Failed":
                raise VmCommandFailed(f"migration {name} failed: {status.get('failureReason')}")
            if time.monotonic() >= deadline:
                raise VmCommandFailed(f"migration {name} not done after {args.timeout:g}s ({line})")
            time.sleep(0.1)
    finally:
        progress.done()
