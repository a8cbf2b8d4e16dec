"""Time-to-recovery benchmark: the `power-loss` and `kubelet-hang` lab scenarios, K times each.

Starts a lab of its own (3 hosts, 2 VMs each, the lab's documented timers), runs each scenario K
times, and prints median and worst ``mttr_seconds`` (failure -> every VM of the failed host running
again), split into detection, fencing and VM restart, plus the remediation's own share (decision ->
every VM running again) against the configured detection window. Figures are printed, not asserted.

    .venv/bin/python bench/recovery.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from remediator.health import parse_duration
from remediator.lab import client
from remediator.lab.controller import lab_health_check
from remediator.lab.scenarios import Lab, ScenarioResult, ScenarioRun, summarize
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per scenario (default 5)")
    parser.add_argument("--vms-per-host", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="also print every run as JSON")
    args = parser.parse_args()
    timers = LabTimers()
    policy_duration = parse_duration(lab_health_check()["spec"]["unhealthyConditions"][0]["duration"])
    window = timers.node_monitor_grace_period + policy_duration.total_seconds()
    with tempfile.TemporaryDirectory(prefix="remediator-bench-") as tmp:
        paths = LabPaths(Path(tmp))
        print("starting a lab (3 hosts) ...", file=sys.stderr, flush=True)
        client.start(paths, 3, timers)
        try:
            lab = Lab(paths)
            summary: dict[str, Any] = {}
            runs: dict[str, list[ScenarioResult]] = {}
            for name in ("power-loss", "kubelet-hang"):
                runs[name] = []
                for i in range(args.repeat):
                    print(f"{name} run {i + 1}/{args.repeat} ...", file=sys.stderr, flush=True)
                    result = ScenarioRun(lab, name, lambda _line: None, args.vms_per_host).run()
                    runs[name].append(result)
                    print(
                        f"  {'passed' if result.passed else 'FAILED'}: mttr {result.mttr_seconds}s, "
                        f"double_running {result.double_running}, vms_lost {result.vms_lost}",
                        file=sys.stderr,
                        flush=True,
                    )
                summary[name] = summarize(runs[name])
        finally:
            client.stop(paths)
    print()
    print("time to recovery (failure -> every VM of the failed host running again)")
    print(
        f"  timers: node-monitor-grace-period {timers.node_monitor_grace_period:g}s, node lease "
        f"{timers.node_lease_duration}s (renewed every {timers.lease_renew_interval:g}s), NodeHealthCheck "
        f"duration {policy_duration.total_seconds():g}s -> detection window ~{window:g}s"
    )
    header = f"  {'scenario':<14} {'runs':>4} {'passed':>6} {'median':>8} {'worst':>8}"
    header += "   detection   fencing  vm restart  own share   double_running  vms_lost"
    print(header)
    for name, s in summary.items():
        mttr = s["mttr_seconds"] or {"median": float("nan"), "worst": float("nan")}
        phases = s["phases"]

        def cell(key: str, phases: dict[str, Any] = phases) -> str:
            p = phases.get(key)
            return f"{p['median']:5.2f}/{p['worst']:5.2f}" if p else "     -     "

        print(
            f"  {name:<14} {s['runs']:>4} {s['passed']:>6} {mttr['median']:7.2f}s {mttr['worst']:7.2f}s"
            f"   {cell('detection')} {cell('fencing')} {cell('vmRestart')} {cell('remediationOwn')}"
            f"   {s['double_running']:>14} {s['vms_lost']:>9}"
        )
    print("  (phase cells: median/worst seconds; own share = Fence created -> every VM running again)")
    if args.json:
        print(json.dumps({k: [r.as_json() for r in v] for k, v in runs.items()}, indent=1, default=str))
    return 0 if all(r.passed for v in runs.values() for r in v) else 1


if __name__ == "__main__":
    sys.exit(main())
