"""``remediator run`` (the controller) and ``remediator fence NODE`` (a manual Fence, followed live).

    remediator run [--kubeconfig PATH] [--namespace NS] [--dry-run]
    remediator fence NODE [--action off|reboot] [--after remove|power-on|keep] [--dry-run] [--wait] [--json]

``run`` waits for the controller Lease (:mod:`remediator.leader`), then runs the kopf operator with
the Fence handlers (:mod:`remediator.handlers`) until SIGTERM/SIGINT, and releases the Lease.
``fence`` creates a Fence; with ``--wait`` it shows each phase with its duration as it happens and
exits 0 only when the Fence succeeded (1 when it failed, 2 on timeout).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from remediator.errors import ConfigError

log = logging.getLogger(__name__)

ACTIONS = {"off": "Off", "reboot": "Reboot"}
AFTER = {"remove": "Remove", "power-on": "PowerOn", "keep": "Keep"}


def register(groups: Any) -> None:
    """Add the ``run`` and ``fence`` commands to the ``remediator`` parser's subparsers."""
    run = groups.add_parser(
        "run",
        help="run the controller (Fences and NodeHealthChecks)",
        description="run the controller: the Fence state machine and the NodeHealthCheck policies",
    )
    run.add_argument("--kubeconfig", type=Path, help="kubeconfig file (default: in-cluster service account)")
    run.add_argument(
        "--namespace",
        default=os.environ.get("REMEDIATOR_NAMESPACE")
        or os.environ.get("POD_NAMESPACE")
        or "remediator-system",
        help="the controller's namespace: credentials Secrets and the leader Lease live here "
        "(default: $REMEDIATOR_NAMESPACE, $POD_NAMESPACE or remediator-system)",
    )
    run.add_argument("--dry-run", action="store_true", help="treat every Fence as a dry run: change nothing")
    run.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="the node this controller runs on, never fenced (default: $NODE_NAME)",
    )
    run.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME") or socket.gethostname(),
        help="leader-election identity (default: $POD_NAME or the host name)",
    )
    run.add_argument("--lease-name", default="remediator-controller", help="name of the leader Lease")
    run.add_argument(
        "--lease-duration", type=float, default=15.0, help="seconds a leader's Lease lasts (default 15)"
    )
    run.add_argument(
        "--pause-at",
        default=os.environ.get("REMEDIATOR_PAUSE_AT", ""),
        help=argparse.SUPPRESS,  # testing aid: comma-separated phases (or PoweringOff:sent) to stop at
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("REMEDIATOR_METRICS_PORT", "0")),
        help="serve Prometheus metrics on http://ADDRESS:PORT/metrics (default: off)",
    )
    run.add_argument(
        "--metrics-address",
        default=os.environ.get("REMEDIATOR_METRICS_ADDRESS", "127.0.0.1"),
        help="address for --metrics-port (default 127.0.0.1; 0.0.0.0 in a cluster)",
    )
    run.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="serve the liveness probe on http://127.0.0.1:PORT/healthz (default: off)",
    )
    run.add_argument(
        "--lease-fast-path",
        action="store_true",
        help="watch node Leases so that NodeHealthChecks with leaseStaleAfter can act on them",
    )
    run.add_argument("--log-level", default="INFO", help="log level (default INFO)")
    run.set_defaults(command=cmd_run)

    fence = groups.add_parser(
        "fence", help="fence a node now (creates a Fence)", description="fence a node now (creates a Fence)"
    )
    fence.add_argument("node", metavar="NODE")
    fence.add_argument("--action", choices=sorted(ACTIONS), default="off", help="off (default) or reboot")
    fence.add_argument(
        "--after",
        choices=sorted(AFTER),
        help="what to do once the node is fenced: remove the Node, power-on and wait for it, or keep it off "
        "(default: keep for off, power-on for reboot)",
    )
    fence.add_argument("--reason", default="manual fence (remediator fence)", help="why; shown in the Fence")
    fence.add_argument("--dry-run", action="store_true", help="check and plan only; change nothing")
    fence.add_argument("--wait", action="store_true", help="follow the Fence; exit non-zero if it fails")
    fence.add_argument(
        "--json", action="store_true", help="print the Fence (its final state with --wait) as JSON"
    )
    fence.add_argument("--timeout", type=float, default=900.0, help="seconds --wait waits (default 900)")
    fence.add_argument(
        "--kubeconfig", type=Path, help="kubeconfig (default: $KUBECONFIG, the lab's, ~/.kube/config)"
    )
    fence.set_defaults(command=cmd_fence)


# --- remediator run ------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    import kopf
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from remediator import fence_controller as fc
    from remediator import health_controller, kube, metrics
    from remediator.leader import LeaderElector

    logging.getLogger().setLevel(args.log_level.upper())
    for handler in logging.getLogger().handlers:
        handler.setLevel(args.log_level.upper())
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # "Handler 'nhc-fences' succeeded" for every watched event: noise, and CPU at scale. The
        # controller logs what it does itself; kopf's warnings and errors still come through.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.kubeconfig is not None:
        if not args.kubeconfig.exists():
            raise ConfigError(f"kubeconfig {args.kubeconfig} does not exist")
        # kopf logs in on its own; it reads the same kubeconfig through $KUBECONFIG.
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    api = kube.api_client(args.kubeconfig)
    try:
        client.CoreV1Api(api).read_namespace(args.namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise ConfigError(f"the controller namespace {args.namespace} does not exist") from exc
        raise
    pause = frozenset(p.strip() for p in args.pause_at.split(",") if p.strip())
    settings = fc.Settings(
        namespace=args.namespace, dry_run=args.dry_run, own_node=args.node_name, pause_at=pause
    )
    elector = LeaderElector(
        api, args.namespace, args.identity, name=args.lease_name, lease_duration=args.lease_duration
    )
    log.info("controller %s starting (namespace %s, dry run %s)", args.identity, args.namespace, args.dry_run)
    metrics.serve(args.metrics_port, args.metrics_address)
    elector.acquire()
    elector.start_renewing()
    import remediator.handlers  # noqa: F401 - registers the Fence handlers

    registry = kopf.get_default_registry()
    health_controller.register(registry, lease_fast_path=args.lease_fast_path)
    try:
        memo = kopf.Memo(api=api, settings=settings, exited={}, reported=set())
        memo.health = health_controller.HealthState(api, dry_run=args.dry_run)
        liveness = f"http://127.0.0.1:{args.health_port}/healthz" if args.health_port else None
        kopf.run(
            standalone=True,
            clusterwide=True,
            memo=memo,
            registry=registry,
            liveness_endpoint=liveness,
        )
    finally:
        elector.release()
    return 0


# --- remediator fence ----------------------------------------------------------------------------


def resolve_kubeconfig(explicit: Path | None) -> Path | None:
    """--kubeconfig, else $KUBECONFIG, else a running lab's, else ~/.kube/config; None: in-cluster."""
    if explicit is not None:
        return explicit
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    from remediator.lab.state import LabPaths, default_state_dir

    lab = LabPaths(default_state_dir()).kubeconfig
    if lab.exists():
        return lab
    home = Path.home() / ".kube" / "config"
    return home if home.exists() else None


def fence_manifest(node: str, action: str, after: str | None, reason: str, dry_run: bool) -> dict[str, Any]:
    from remediator import fence_controller as fc

    spec: dict[str, Any] = {
        "nodeName": node,
        "action": ACTIONS[action],
        "afterFence": AFTER[after] if after else ("PowerOn" if action == "reboot" else "Keep"),
        "reason": reason,
        "dryRun": dry_run,
    }
    return {
        "apiVersion": f"{fc.GROUP}/{fc.VERSION}",
        "kind": fc.KIND,
        "metadata": {"generateName": f"{node}-"[:200]},
        "spec": spec,
    }


def cmd_fence(args: argparse.Namespace) -> int:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from remediator import fence_controller as fc
    from remediator import kube

    api = kube.api_client(resolve_kubeconfig(args.kubeconfig))
    manifest = fence_manifest(args.node, args.action, args.after, args.reason, args.dry_run)
    try:
        created: Any = client.CustomObjectsApi(api).create_cluster_custom_object(
            fc.GROUP, fc.VERSION, fc.PLURAL, kube.body(manifest)
        )
    except ApiException as exc:
        detail = exc.body if isinstance(exc.body, str) else exc.reason
        raise ConfigError(f"creating the Fence was refused: {detail}") from exc
    name = created["metadata"]["name"]
    spec = created["spec"]
    if not args.wait:
        print(json.dumps(created, indent=2) if args.json else f"fence.{fc.GROUP}/{name} created")
        return 0
    out = sys.stderr if args.json else sys.stdout
    print(
        f"Fence {name}: node {spec['nodeName']}, {spec['action']}, then {spec['afterFence']}"
        + (" (dry run)" if spec.get("dryRun") else ""),
        file=out,
        flush=True,
    )
    final = follow(api, name, args.timeout, out)
    if final is None:
        print(f"remediator: gave up waiting for Fence {name} after {args.timeout:g}s", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(final, indent=2))
    return 0 if (final.get("status") or {}).get("phase") == "Succeeded" else 1


def follow(api: Any, name: str, timeout: float, out: Any) -> dict[str, Any] | None:
    """Print each phase with its duration as the Fence goes through it; return the final object."""
    from remediator import fence_controller as fc
    from remediator.progress import ProgressLine

    progress = ProgressLine(out, min_interval=5.0)
    start = time.monotonic()
    shown = 0
    attempts_shown = 0
    while time.monotonic() - start < timeout:
        obj = fc.get_fence(api, name)
        if obj is None:
            progress.done()
            print(f"Fence {name} was deleted", file=out)
            return {"metadata": {"name": name}, "status": {"phase": "Deleted"}}
        status = obj.get("status") or {}
        phases = status.get("phases") or []
        attempts = status.get("attempts") or []
        for attempt in attempts[attempts_shown:]:
            result = attempt.get("result")
            detail = attempt.get("message", "") if result != "Succeeded" else ""
            progress(
                f"           attempt: {attempt.get('operation')} via level {attempt.get('level', 0) + 1} "
                f"{attempt.get('levelType')} #{attempt.get('attempt')}: {result} in "
                f"{attempt.get('durationSeconds', 0):.2f}s {detail}".rstrip(),
                keep=True,
            )
        attempts_shown = len(attempts)
        for record in phases[shown:]:
            if "durationSeconds" not in record:
                break
            progress(f"  {record['phase']:<12} {record['durationSeconds']:>8.3f}s", keep=True)
            shown += 1
        phase = status.get("phase") or "Pending"
        if phase in ("Succeeded", "Failed"):
            progress.done()
            total = phases_total(phases)
            print(
                f"{phase} in {total:.2f}s: {status.get('reason', '')}: {status.get('message', '')}", file=out
            )
            for line in status.get("plan") or []:
                print(f"  plan: {line}", file=out)
            return obj
        if shown < len(phases):
            current = phases[shown]
            progress(
                f"  {current['phase']:<12} ... {time.monotonic() - start:.1f}s  {status.get('message', '')}"
            )
        time.sleep(0.1)
    progress.done()
    return None


def phases_total(phases: list[dict[str, Any]]) -> float:
    if not phases:
        return 0.0
    from remediator.workflow import parse_time

    first = parse_time(phases[0].get("startedAt"))
    last = parse_time(phases[-1].get("finishedAt") or phases[-1].get("startedAt"))
    return (last - first).total_seconds() if first and last else 0.0


def main(argv: list[str] | None = None) -> int:
    """``python -m remediator.controller_cli run|fence ...`` (the same commands as ``remediator``)."""
    from remediator.errors import RemediatorError

    parser = argparse.ArgumentParser(prog="python -m remediator.controller_cli")
    register(parser.add_subparsers(dest="group", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.command(args)
    except RemediatorError as exc:
        print(f"remediator: error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
