"""``remediator lab ...``: bring a lab up and down, look at it, and break and heal its hosts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from remediator.errors import ConfigError, LabError, LabNotRunning
from remediator.lab import binaries, client
from remediator.lab.hosts import FAILURE_MODES
from remediator.lab.state import LabPaths, default_state_dir
from remediator.lab.timers import LabTimers
from remediator.progress import ProgressLine

DEFAULT_HOSTS = 3


def register(groups: Any) -> None:
    lab = groups.add_parser("lab", help="a one-machine lab: real control plane, emulated hosts")
    commands = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help=f"where the lab keeps its files (default: $REMEDIATOR_LAB_DIR or {default_state_dir()})",
        )
        parser.set_defaults(command=handler)
        return parser

    up = add("up", cmd_up, "start a lab in the background (does nothing if one runs)")
    up.add_argument("--hosts", type=int, default=DEFAULT_HOSTS, help="number of hosts (default: 3)")
    defaults = LabTimers()
    up.add_argument(
        "--node-monitor-grace-period",
        type=float,
        default=defaults.node_monitor_grace_period,
        metavar="SECONDS",
        help="how long a silent node stays Ready before it is marked Unknown "
        f"(lab default {defaults.node_monitor_grace_period:g}s; upstream 50s)",
    )
    up.add_argument(
        "--node-lease-duration",
        type=int,
        default=defaults.node_lease_duration,
        metavar="SECONDS",
        help="node lease duration; renewed every quarter of it "
        f"(lab default {defaults.node_lease_duration}s)",
    )
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the lab to be ready")
    up.add_argument(
        "--no-controller",
        action="store_true",
        help="do not run the remediation controller (and so no NodeHealthCheck either)",
    )
    up.add_argument(
        "--no-health-check",
        action="store_true",
        help="do not install the lab's default NodeHealthCheck (Fences only when you create them)",
    )

    add("down", cmd_down, "stop everything the lab started")
    from remediator.lab import scenario_cli

    scenario_cli.register(add)
    status = add("status", cmd_status, "what runs, and the state of every node")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    add("kubeconfig", cmd_kubeconfig, "print the path of the lab's admin kubeconfig")
    add("build", cmd_build, "build (or find) the pinned control-plane binaries; `lab up` does this too")

    fail = add("fail", cmd_fail, "make a host fail")
    fail.add_argument("host", help="host name, e.g. lab-host-2")
    fail.add_argument(
        "--mode",
        required=True,
        choices=list(FAILURE_MODES),
        help="kubelet-hang: the host stays powered but its node stops reporting; "
        "power-loss: the host's power is cut behind the controller's back",
    )

    bmc = add("bmc", cmd_bmc, "a host's BMC addresses and the lab's BMC credentials (lab only)")
    bmc.add_argument("host", help="host name, e.g. lab-host-2")
    bmc.add_argument("--json", action="store_true", help="print one JSON object")

    vm = add("vm", cmd_vm_create, "lab VMs (vmcore VirtualMachines in namespace default)")
    vm_commands = vm.add_subparsers(dest="vm_command", metavar="VM_COMMAND", required=True)
    create = vm_commands.add_parser(
        "create",
        help="create VMs (the scheduler spreads them over the hosts)",
        description=cmd_vm_create.__doc__,
    )
    create.add_argument("name", help="the VM's name; with --count, NAME-1 ... NAME-N")
    create.add_argument("--count", type=int, default=1, help="how many VMs (default 1)")
    create.add_argument("--memory", default="64Mi", help="guest memory (default 64Mi)")
    create.add_argument(
        "--eviction-strategy",
        default="LiveMigrate",
        choices=["LiveMigrate", "LiveMigrateIfPossible", "None"],
        help="what a drain does to them (default LiveMigrate)",
    )
    create.add_argument("--wait", action="store_true", help="wait until they run; print where")
    create.add_argument("--timeout", type=float, default=120.0, help="seconds --wait waits (default 120)")
    create.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    heal = add("heal", cmd_heal, "undo a host's failure (restore power, or restart its kubelet)")
    heal.add_argument("host", help="host name, e.g. lab-host-2")
    heal.add_argument("--wait", action="store_true", help="wait until the node is Ready again")


def _paths(args: argparse.Namespace) -> LabPaths:
    return LabPaths((args.state_dir or default_state_dir()).resolve())


def cmd_build(args: argparse.Namespace) -> int:
    progress = ProgressLine()
    found = binaries.ensure_binaries(lambda line: progress(line, keep=line.startswith("built")))
    progress.done()
    for name, path in sorted(found.items()):
        print(f"{name}: {path}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    if args.hosts < 1 or args.hosts > 50:
        raise ConfigError(f"--hosts must be between 1 and 50, not {args.hosts}")
    try:
        timers = LabTimers(
            node_monitor_grace_period=args.node_monitor_grace_period,
            node_lease_duration=args.node_lease_duration,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    paths = _paths(args)
    progress = ProgressLine()
    started = time.monotonic()
    if not client.is_running(paths):
        binaries.ensure_binaries(lambda line: progress(line, keep=line.startswith("built")))
    try:
        status = client.start(
            paths,
            args.hosts,
            timers,
            lambda line: progress(line, keep=True),
            args.timeout,
            controller=not args.no_controller,
            health_check=not args.no_health_check,
        )
    finally:
        progress.done()
    if status.get("reused"):
        print(f"A lab is already running in {paths.root} ({status.get('hostCount')} hosts); nothing started.")
    else:
        print(f"Lab ready in {time.monotonic() - started:.1f}s.")
    print(f"  state and logs: {paths.root}  (logs/, daemon.log)")
    print(f"  kubeconfig:     {paths.kubeconfig}")
    print(f"  API server:     {status.get('server')}")
    print(f"Try: export KUBECONFIG={paths.kubeconfig}; kubectl get nodes   (or `remediator lab status`)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    paths = _paths(args)
    if client.stop(paths):
        print(f"Lab in {paths.root} stopped.")
    else:
        print(f"No lab is running in {paths.root}.")
    return 0


def cmd_kubeconfig(args: argparse.Namespace) -> int:
    paths = _paths(args)
    if not client.is_running(paths):
        raise LabNotRunning(str(paths.root))
    print(paths.kubeconfig)
    return 0


def cmd_fail(args: argparse.Namespace) -> int:
    reply = client.request(_paths(args), {"command": "fail", "host": args.host, "mode": args.mode})
    print(reply.get("message"))
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    paths = _paths(args)
    reply = client.request(paths, {"command": "heal", "host": args.host})
    print(reply.get("message"))
    if args.wait:
        from remediator.lab.inspect import wait_node_ready

        waited = wait_node_ready(paths, args.host, timeout=120.0)
        print(f"{args.host} is Ready ({waited:.1f}s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from remediator.lab.inspect import lab_report

    paths = _paths(args)
    report = lab_report(paths)
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    if not report["running"]:
        print(f"No lab is running in {paths.root}.")
        return 0
    lab = report["lab"]
    print(f"Lab in {paths.root}: {lab.get('status')}, API server {lab.get('server')}")
    timers = lab.get("timers", {})
    print(
        f"  timers: node-monitor-grace-period {timers.get('nodeMonitorGracePeriodSeconds')}s, "
        f"node lease {timers.get('nodeLeaseDurationSeconds')}s"
    )
    print("  processes:")
    for proc in report["processes"]:
        print(f"    {proc['name']:<28} pid {proc['pid']:<8} {proc['log']}")
    print("  nodes:")
    print(f"    {'NAME':<14} {'READY':<8} {'LAB FAILURE':<14} TAINTS")
    for node in report["nodes"]:
        taints = ", ".join(node["taints"]) or "-"
        print(f"    {node['name']:<14} {node['ready']:<8} {node['failure'] or '-':<14} {taints}")
    vm_hosts = report.get("vmHosts") or []
    if vm_hosts:
        print("  VMs (as each host's libvirt reports them):")
    for host in vm_hosts:
        print(f"    {host['name']:<14} {host['libvirtUri']}")
        if host["domains"] is None:
            print("      (libvirt not answering: host off or starting)")
        elif not host["domains"]:
            print("      (no domains)")
        for domain in host["domains"] or []:
            print(f"      {domain['name']:<40} {domain['state']}")
    return 0


def cmd_vm_create(args: argparse.Namespace) -> int:
    """Create lab VMs: tiny diskless qemu guests, one VM pod each, placed by the kube-scheduler."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from remediator import kube
    from vmcore import api as vapi

    if not 1 <= args.count <= 100:
        raise ConfigError(f"--count must be between 1 and 100, not {args.count}")
    paths = _paths(args)
    if not client.is_running(paths):
        raise LabNotRunning(str(paths.root))
    api = k8s.CustomObjectsApi(kube.api_client(paths.kubeconfig))
    names = [args.name] if args.count == 1 else [f"{args.name}-{i}" for i in range(1, args.count + 1)]
    for name in names:
        body = {
            "apiVersion": vapi.API_VERSION,
            "kind": vapi.VM_KIND,
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"memory": {"guest": args.memory}, "evictionStrategy": args.eviction_strategy},
        }
        try:
            api.create_namespaced_custom_object(vapi.GROUP, vapi.VERSION, "default", vapi.VM_PLURAL, body)
        except ApiException as exc:
            raise ConfigError(f"VM {name}: {kube.api_error_message(exc)}") from exc
        print(f"VirtualMachine default/{name} created")
    if not args.wait:
        return 0
    deadline = time.monotonic() + args.timeout
    placed: dict[str, str] = {}
    while len(placed) < len(names):
        for name in names:
            vm: Any = api.get_namespaced_custom_object(
                vapi.GROUP, vapi.VERSION, "default", vapi.VM_PLURAL, name
            )
            status = vm.get("status") or {}
            if name not in placed and status.get("phase") == "Running":
                placed[name] = str(status.get("nodeName"))
                print(f"  {name} runs on {placed[name]}")
        if len(placed) < len(names):
            if time.monotonic() >= deadline:
                raise LabError(
                    "lab vm create", f"{len(names) - len(placed)} VMs not running after {args.timeout:g}s"
                )
            time.sleep(0.2)
    return 0


def cmd_bmc(args: argparse.Namespace) -> int:
    from remediator.lab.inspect import host_bmc

    info = host_bmc(_paths(args), args.host)
    if args.json:
        json.dump(info, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    redfish, ipmi = info["redfish"], info["ipmi"]
    port = ipmi["address"].rsplit(":", 1)[1]
    print(f"{args.host} (system UUID {info['systemUUID']}, power {info['power']})")
    print(f"  Redfish: {redfish['address']}")
    print(f"           {redfish['url']}  (HTTPS, CA {info['caFile']})")
    print(f"  IPMI:    {ipmi['address']}  (lanplus, HMAC-SHA1 only: cipher suite 3)")
    print(f"  user {info['username']}, password {info['password']}  (lab credentials)")
    print("Try:")
    print(f"  curl --cacert {info['caFile']} -u {info['username']}:{info['password']} {redfish['url']}")
    print(
        f"  ipmitool -I lanplus -C 3 -H 127.0.0.1 -p {port} -U {info['username']} "
        f"-P {info['password']} power status"
    )
    print(
        f"  fence_redfish --ip 127.0.0.1 --ipport {redfish['port']} --ssl-secure "
        f"--systems-uri {redfish['systemPath']} -l {info['username']} -p {info['password']} -o status"
        f"   (needs the CA trusted, or --ssl-insecure)"
    )
    print(
        f"  remediator bmc status {redfish['address']} --username {info['username']} "
        f"--password-file <(echo {info['password']}) --ca-file {info['caFile']}"
    )
    return 0
