"""``remediator lab demo``, ``remediator lab scenario`` and ``remediator lab controller``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from remediator.errors import ConfigError, LabError
from remediator.lab import binaries, client
from remediator.lab.scenarios import SCENARIOS, Lab, ScenarioResult, ScenarioRun, summarize
from remediator.lab.state import LabPaths, default_state_dir
from remediator.lab.timers import LabTimers
from remediator.progress import ProgressLine
from vmcore.virt import kvm_usable

MIN_FREE_DISK = 1 << 30  # a lab needs about 1 GiB besides the cached binaries

AddCommand = Callable[[str, Any, str], argparse.ArgumentParser]


def register(add: AddCommand) -> None:
    demo = add("demo", cmd_demo, "from nothing: a lab, VMs, a host losing power, and its VMs back elsewhere")
    demo.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    demo.add_argument("--vms-per-host", type=int, default=2, help="VMs per host (default 2)")

    scenario = add(
        "scenario", cmd_scenario, "run a failure scenario on the running lab and check its outcome"
    )
    scenario.add_argument("name", choices=SCENARIOS, metavar="NAME", help=f"one of: {', '.join(SCENARIOS)}")
    scenario.add_argument("--host", help="the host to break (default: the one running the most VMs)")
    scenario.add_argument("--repeat", type=int, default=1, help="run it K times; report median and worst")
    scenario.add_argument("--json", action="store_true", help="print one JSON object")
    scenario.add_argument("--vms-per-host", type=int, default=2, help="VMs per host (default 2)")

    controller = add("controller", cmd_controller, "kill or start the lab's remediation controller")
    controller.add_argument("action", choices=["kill", "start"])


def _paths(args: argparse.Namespace) -> LabPaths:
    return LabPaths((args.state_dir or default_state_dir()).resolve())


def _report(result: ScenarioResult, out: Any) -> None:
    split = result.split()
    print(f"\n{'PASSED' if result.passed else 'FAILED'}: {result.scenario} of {result.host}", file=out)
    if result.mttr_seconds is not None:
        print(f"  time to recovery: {result.mttr_seconds:.1f}s (failure -> every VM running again)", file=out)
    labels = {
        "detection": "failure -> Fence created",
        "fencing": "Fence created -> host verified off",
        "vmRestart": "verified off -> VMs running",
        "remediationOwn": "remediation's own share (decision -> VMs running)",
    }
    for key, label in labels.items():
        if split[key] is not None:
            print(f"    {label:<52} {split[key]:6.2f}s", file=out)
    print(f"  VMs ever running on two hosts: {result.double_running}; VMs lost: {result.vms_lost}", file=out)
    for name, ok, detail in result.checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}{': ' + detail if detail and not ok else ''}", file=out)


def cmd_scenario(args: argparse.Namespace) -> int:
    if args.repeat < 1:
        raise ConfigError("--repeat must be at least 1")
    paths = _paths(args)
    progress = ProgressLine()
    say = (lambda _line: None) if args.json else (lambda line: progress(line, keep=True))
    lab = Lab(paths)
    results: list[ScenarioResult] = []
    for i in range(args.repeat):
        if args.repeat > 1 and not args.json:
            print(f"--- run {i + 1} of {args.repeat}", file=sys.stderr)
        result = ScenarioRun(lab, args.name, say, vms_per_host=args.vms_per_host, host=args.host).run()
        results.append(result)
        if not args.json:
            _report(result, sys.stdout)
    if args.json:
        last = results[-1].as_json()
        if args.repeat > 1:
            last = {**last, "repeat": summarize(results), "runs": [r.as_json() for r in results]}
        json.dump(last, sys.stdout, indent=2, sort_keys=True)
        print()
    elif args.repeat > 1:
        print(json.dumps(summarize(results), indent=2))
    return 0 if all(r.passed for r in results) else 1


def cmd_controller(args: argparse.Namespace) -> int:
    reply = client.request(_paths(args), {"command": "controller", "action": args.action})
    print(reply.get("message"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    paths = _paths(args)
    if client.is_running(paths):
        raise LabError(
            "lab demo",
            f"a lab is already running in {paths.root}; stop it with `remediator lab down` "
            "or give another --state-dir",
        )
    paths.root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(paths.root).free
    if free < MIN_FREE_DISK:
        raise LabError(
            "lab demo", f"only {free >> 20} MiB free under {paths.root}; the lab needs about 1 GiB"
        )
    progress = ProgressLine()
    started = time.monotonic()
    print(
        f"Remediator lab demo: {args.hosts} hosts, {args.vms_per_host} VMs each "
        f"({'KVM' if kvm_usable() else 'no usable /dev/kvm: guests run under TCG'}).",
        flush=True,
    )
    try:
        binaries.ensure_binaries(lambda line: progress(line, keep=line.startswith("built")))
        client.start(paths, args.hosts, LabTimers(), lambda line: progress(f"lab up {line}", keep=True))
        progress(
            f"lab ready after {time.monotonic() - started:.1f}s; every host has Redfish and IPMI BMCs",
            keep=True,
        )
        run = ScenarioRun(Lab(paths), "power-loss", lambda line: progress(line, keep=True), args.vms_per_host)
        result = run.run()
    except KeyboardInterrupt:
        progress.done()
        print("\nInterrupted: stopping the lab ...", file=sys.stderr, flush=True)
        client.stop(paths)
        print(f"Lab in {paths.root} stopped; nothing is left running.", file=sys.stderr)
        return 130
    progress.done()
    _report(result, sys.stdout)
    if result.timeline is not None:
        print("\n" + result.timeline.as_text())
        pictures = result.timeline.render(paths.root / "demo-timeline")
        print(f"\nTimeline picture: {pictures[0]} and {pictures[1]}")
    print(f"\nThe lab keeps running in {paths.root}.")
    print("Try `remediator lab status` or `remediator lab scenario NAME`; `remediator lab down` stops it.")
    return 0 if result.passed else 1
