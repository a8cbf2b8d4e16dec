"""Scale: the controller watching 1,000 and 5,000 emulated nodes, idle and while 1% of them fail.

For each size N (``--nodes 1000,5000``) on a fresh lab control plane of its own (etcd,
kube-apiserver, kube-controller-manager with lab timers; no scheduler, no pods):

1. N Nodes are created through the API by a thread pool, labelled ``bench=scale`` and
   ``bench-group=a`` -- or ``bench-group=b`` for every 100th node (``--fail-percent``, 1% by default).
   Two kwok processes keep them alive, one per group (``--manage-nodes-with-label-selector``), with the
   lab's kwok configuration and stages (lease renewal and stage parallelism raised for thousands of
   nodes, and a longer lease -- see ``bench_timers``).
2. The controller runs as a subprocess (``python -m remediator.controller_cli run``), and a
   NodeHealthCheck selects ``bench=scale``: Ready=Unknown for ``--duration`` seconds, minHealthy 51%.
3. Once the policy's status shows ``observedNodes == N`` and kwok's periodic node status reports have
   started (60-126 s after a node turns Ready, lab stage ``lab-node-status-report``), the controller's
   resident memory (VmRSS of its process tree) and CPU (utime+stime deltas from /proc) are measured
   over ``--idle`` seconds with nothing failing.
4. The group-b kwok is killed (1% of the nodes fail at once). kube-controller-manager marks each node
   Ready=Unknown after its grace period; the delay reported per failed node is from
   ``Ready.lastTransitionTime + duration`` (when the policy's duration elapses) to the moment this
   process *receives* the Fence's ADDED event on a watch (a local timestamp; the bench and the
   API server share the machine's clock). The lastTransitionTime has whole-second precision, so the
   reference point is the recorded second: the true transition lies in [LTT, LTT + 1 s), and the delay
   from the true instant can be up to 1 s shorter than the one shown, never longer.

The Fences fail (the nodes have no NodeFencing) and the controller's Fence state machine processes
them too, in the same process: that work is part of the load while the delays are measured.

Prints a table (nodes, RSS, idle CPU, delay p50/p99/max) and the growth from the smallest to the
largest size. A benchmark, not a test: it asserts nothing about the figures.

    .venv/bin/python bench/scale.py [--nodes 1000,5000] [--duration 5] [--idle 30] [--profile DIR]
                                    [--lease-fast-path]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from remediator import kube
from remediator.errors import LabError
from remediator.lab import binaries as binaries_mod
from remediator.lab.controller import wait_for_leader
from remediator.lab.controlplane import ControlPlane, wait_until
from remediator.lab.hosts import LabHost, node_status, write_kwok_config
from remediator.lab.procs import ManagedProcess, Supervisor
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers

GROUP, VERSION = "remediator.io", "v1alpha1"
NAMESPACE = "remediator-system"
IDENTITY = "bench"
POLICY = "bench-scale"
SELECTOR = "bench=scale"
#: kwok's lab stage reports a Ready node's full status first 60-126 s after it turned Ready.
STATUS_REPORT_START_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- /proc: the controller's memory and CPU --------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the controller has none today; counted if it ever has)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory of the process tree (VmRSS), in MB (10^6 bytes)."""
    return sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) * 1024 / 1e6


def peak_rss_mb(pid: int) -> float:
    """The process's own high-water mark (VmHWM), in MB."""
    return _status_kb(pid, "VmHWM") * 1024 / 1e6


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime+stime of each process (plus its reaped children's), in seconds."""
    out: dict[int, float] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            out[pid] = sum(int(v) for v in fields[11:15]) / CLK_TCK
    return out


@dataclass
class CpuWindow:
    """CPU seconds used by some processes between ``start()`` and ``stop()``."""

    pids: dict[str, list[int]]
    started: float = 0.0
    before: dict[str, dict[int, float]] = field(default_factory=dict)
    seconds: float = 0.0
    used: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self.before = {name: cpu_seconds(pids) for name, pids in self.pids.items()}
        self.started = time.monotonic()

    def stop(self) -> None:
        self.seconds = time.monotonic() - self.started
        for name, pids in self.pids.items():
            after = cpu_seconds(pids)
            self.used[name] = sum(after[p] - self.before[name].get(p, 0.0) for p in after)

    def percent(self, name: str) -> float:
        return 100.0 * self.used[name] / self.seconds if self.seconds else math.nan


# --- the cluster ----------------------------------------------------------------------------------


def bench_timers(lease_duration: int, grace: float) -> LabTimers:
    """Lab timers for thousands of nodes: the lab's 4 s lease (renewed every second) would mean
    thousands of lease writes a second; a longer lease is renewed every lease/4 s."""
    return LabTimers(
        node_monitor_grace_period=grace,
        node_monitor_period=1.0,
        node_startup_grace_period=300.0,  # kwok may take a while to report thousands of nodes Ready
        node_lease_duration=lease_duration,
    )


def kwok_config(paths: LabPaths, timers: LabTimers) -> Path:
    """The lab's kwok configuration and stages, with more parallel lease renewals and stage plays."""
    path = write_kwok_config(paths, timers)
    text = path.read_text()
    for option, value in (("nodeLeaseParallelism", 16), ("nodePlayStageParallelism", 8)):
        if f"  {option}: 2\n" not in text:
            raise LabError("kwok config", f"the lab's kwok config no longer sets {option}: 2")
        text = text.replace(f"  {option}: 2\n", f"  {option}: {value}\n")
    path.write_text(text)
    return path


def node_name(index: int) -> str:
    return f"scale-{index:05d}"


def failing(index: int, fail_every: int) -> bool:
    return index % fail_every == 0


def node_manifest(index: int, group: str) -> dict[str, Any]:
    """A Node like a lab host's (the lab's status: capacity, addresses, nodeInfo), bench labels."""
    name = node_name(index)
    host = LabHost(
        index=index,
        name=name,
        system_uuid=str(uuid.uuid4()),
        node_ip=f"127.1.{index // 256}.{index % 256}",
        pod_cidr="",
    )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                # As a kubelet registers them: otherwise kwok adds them one node at a time, and each
                # label change wakes the policy (a new label may change what a selector picks).
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "bench": "scale",
                "bench-group": group,
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        # Registered Ready (as a kubelet's first status report would say), so that kwok only has to
        # renew leases: at thousands of nodes its "ready" stage plays would lag behind the creation.
        "status": {**node_status(host), "conditions": [_ready_now()]},
    }


def _ready_now() -> dict[str, str]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }


def create_nodes(kubeconfig: Path, count: int, fail_every: int, workers: int) -> None:
    """Create the nodes through the API from a pool of threads, one API client per thread."""
    local = threading.local()

    def create(index: int) -> None:
        core: client.CoreV1Api | None = getattr(local, "core", None)
        if core is None:
            core = client.CoreV1Api(kube.api_client(kubeconfig))
            local.core = core
        group = "b" if failing(index, fail_every) else "a"
        try:
            core.create_node(kube.body(node_manifest(index, group)), _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="create") as pool:
        for _ in pool.map(create, range(1, count + 1)):
            pass


def list_nodes(core: client.CoreV1Api, selector: str) -> list[dict[str, Any]]:
    """Nodes as plain dicts (the client's model deserialization is slow at thousands of nodes)."""
    response: Any = core.list_node(label_selector=selector, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items


def ready_condition(node: dict[str, Any]) -> dict[str, Any] | None:
    conditions = (node.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Ready"), None)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


#: With --lease-fast-path: longer than any run, so detection stays with Ready=Unknown and the figures
#: show what watching every node Lease costs.
LEASE_STALE_AFTER = "30m"


def health_check(duration: float, lease_fast_path: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NodeHealthCheck",
        "metadata": {"name": POLICY},
        "spec": {
            "selector": {"matchLabels": {"bench": "scale"}},
            "unhealthyConditions": [{"type": "Ready", "status": "Unknown", "duration": f"{duration:g}s"}],
            "minHealthy": "51%",
            "fenceTemplate": {"action": "Off", "afterFence": "Keep"},
            "escalationTimeout": "10m",
            **({"leaseStaleAfter": LEASE_STALE_AFTER} if lease_fast_path else {}),
        },
    }


class FenceWatch:
    """Records when this process first receives each Fence (ADDED), by node, on a watch."""

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.seen: dict[str, float] = {}
        self.annotations: dict[str, dict[str, str]] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        listed: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, "fences")
        self._version = str(listed["metadata"]["resourceVersion"])
        self._thread = threading.Thread(target=self._run, name="fence-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    self.custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    "fences",
                    resource_version=self._version,
                    timeout_seconds=5,
                ):
                    received = time.time()
                    obj = event["object"]
                    meta = obj.get("metadata") or {}
                    self._version = str(meta.get("resourceVersion") or self._version)
                    node = (obj.get("spec") or {}).get("nodeName")
                    if event["type"] == "ADDED" and node:
                        with self.lock:
                            self.seen.setdefault(str(node), received)
                            self.annotations.setdefault(str(node), dict(meta.get("annotations") or {}))
                    if self._stop.is_set():
                        break
            except ApiException as exc:
                if exc.status != 410:
                    raise
                listed: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, "fences")
                self._version = str(listed["metadata"]["resourceVersion"])
            except (OSError, urllib3.exceptions.HTTPError):
                if self._stop.wait(1.0):  # torn down under us (Ctrl-C): stop quietly
                    return

    def count(self, nodes: set[str]) -> int:
        with self.lock:
            return len(nodes & self.seen.keys())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class NodeEventCounter:
    """Counts node watch events (what the controller's node watch receives) without parsing them."""

    def __init__(self, api: client.ApiClient, resource_version: str) -> None:
        self.core = client.CoreV1Api(api)
        self.count = 0
        self._version = resource_version
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        response: Any = self.core.list_node(
            watch=True,
            resource_version=self._version,
            allow_watch_bookmarks=False,
            timeout_seconds=600,
            _preload_content=False,
        )
        try:
            for _line in response:
                self.count += 1
                if self._stop.is_set():
                    break
        except (OSError, urllib3.exceptions.HTTPError):
            return  # the API server went away (Ctrl-C during the idle window)
        finally:
            response.release_conn()

    def stop(self) -> int:
        self._stop.set()
        return self.count


# --- one size ------------------------------------------------------------------------------------


@dataclass
class Options:
    duration: float
    idle: float
    fail_every: int
    lease_duration: int
    grace: float
    workers: int
    profile: Path | None
    keep: bool
    lease_fast_path: bool = False


@dataclass
class Idle:
    rss: float
    peak_rss: float
    window: CpuWindow
    node_events: int
    others: list[str]


@dataclass
class SizeResult:
    nodes: int
    failed: int
    setup: dict[str, float]
    rss_mb: float
    peak_rss_mb: float
    peak_rss_after_mb: float
    idle_cpu_percent: float
    idle_seconds: float
    idle_node_events: int
    others_cpu_percent: dict[str, float]
    delays: list[float]
    missing: list[str]
    early_fences: list[str]
    annotation_skew: list[float]
    phase_delays: list[float]
    detection: list[float]
    failure_cpu_seconds: float
    failure_window: float
    load: list[float]


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class SizeRun:
    """One control plane, N nodes, two kwoks and the controller; torn down by :meth:`close`."""

    def __init__(self, nodes: int, options: Options, root: Path, binaries: dict[str, Path]) -> None:
        self.nodes = nodes
        self.options = options
        self.paths = LabPaths(root)
        self.supervisor = Supervisor()
        self.timers = bench_timers(options.lease_duration, options.grace)
        self.cp = ControlPlane(self.paths, self.supervisor, binaries, self.timers)
        self.kwok: dict[str, ManagedProcess] = {}
        self.controller: ManagedProcess | None = None
        self.setup: dict[str, float] = {}
        self.load: list[float] = []

    def _timed(self, step: str, started: float) -> None:
        self.setup[step] = time.monotonic() - started

    def start(self) -> client.ApiClient:
        started = time.monotonic()
        self.cp.allocate_ports()
        self.cp.generate_pki()
        self.cp.write_kubeconfigs()
        self.cp.start_etcd()
        self.cp.start_apiserver()
        self.cp.start_controller_manager()
        api = kube.api_client(self.paths.kubeconfig)
        kube.apply_crds(api)
        kube.ensure_namespace(client.CoreV1Api(api), NAMESPACE)
        self._timed("control plane", started)
        say(f"control plane up in {self.setup['control plane']:.1f}s ({self.cp.server})")
        return api

    def start_kwoks(self) -> None:
        config = kwok_config(self.paths, self.timers)
        for group in ("a", "b"):
            argv = [
                str(self.cp.binaries["kwok"]),
                f"--kubeconfig={self.paths.kubeconfig}",  # the admin: enough rights for any node
                f"--config={config}",
                f"--manage-nodes-with-label-selector=bench-group={group}",
                f"--node-lease-duration-seconds={self.timers.node_lease_duration}",
            ]
            self.kwok[group] = self.supervisor.spawn(f"kwok-{group}", argv, self.paths.log(f"kwok-{group}"))

    def wait_all_ready(self, core: client.CoreV1Api, timeout: float) -> float:
        def all_ready() -> bool:
            nodes = list_nodes(core, SELECTOR)
            ready = sum(1 for n in nodes if (ready_condition(n) or {}).get("status") == "True")
            return ready == self.nodes

        for group, proc in self.kwok.items():
            if not proc.alive():
                raise LabError(f"kwok {group}", proc.exit_summary(), str(proc.log_path))
        return wait_until(all_ready, step="nodes Ready", timeout=timeout, proc=self.kwok["a"], interval=2.0)

    def start_controller(self, api: client.ApiClient) -> ManagedProcess:
        argv = [sys.executable]
        if self.options.profile is not None:
            self.options.profile.mkdir(parents=True, exist_ok=True)
            argv += ["-m", "cProfile", "-o", str(self.options.profile / f"controller-{self.nodes}.prof")]
        argv += [
            "-m",
            "remediator.controller_cli",
            "run",
            f"--kubeconfig={self.paths.kubeconfig}",
            f"--namespace={NAMESPACE}",
            f"--identity={IDENTITY}",
            "--metrics-port=0",
            *(["--lease-fast-path"] if self.options.lease_fast_path else []),
        ]
        self.controller = self.supervisor.spawn("controller", argv, self.paths.log("controller"))
        wait_for_leader(api, NAMESPACE, IDENTITY, self.controller)
        return self.controller

    def wait_observed(self, custom: client.CustomObjectsApi, timeout: float) -> float:
        def observed() -> bool:
            try:
                body: Any = custom.get_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", POLICY)
            except ApiException:
                return False
            status = body.get("status") or {}
            healthy = status.get("healthyNodes") == self.nodes
            return bool(status.get("observedNodes") == self.nodes and healthy)

        return wait_until(observed, step="policy observes every node", timeout=timeout, proc=self.controller)

    def run(self) -> SizeResult:
        self.load.append(os.getloadavg()[0])
        api = self.start()
        controller = self.prepare(api)
        idle = self.measure_idle(api, controller)
        return self.fail_and_measure(api, controller, idle)

    def prepare(self, api: client.ApiClient) -> ManagedProcess:
        """Nodes, kwoks, the controller and its policy; returns once the policy sees every node."""
        opts = self.options
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        self.start_kwoks()
        started = time.monotonic()
        create_nodes(self.paths.kubeconfig, self.nodes, opts.fail_every, opts.workers)
        self._timed("create nodes", started)
        say(f"{self.nodes} nodes created in {self.setup['create nodes']:.1f}s ({opts.workers} threads)")
        started = time.monotonic()
        self.wait_all_ready(core, timeout=300)
        self._timed("nodes Ready", started)
        all_ready_at = time.monotonic()
        say(f"all nodes Ready {self.setup['nodes Ready']:.1f}s later")

        started = time.monotonic()
        controller = self.start_controller(api)
        policy = health_check(opts.duration, opts.lease_fast_path)
        custom.create_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", policy)
        self.wait_observed(custom, timeout=300)
        self._timed("controller observes all", started)
        seconds = self.setup["controller observes all"]
        say(f"controller (pid {controller.pid}) observes all {self.nodes} nodes after {seconds:.1f}s")

        settle_until = all_ready_at + STATUS_REPORT_START_S + 5
        if time.monotonic() < settle_until:
            say(f"waiting {settle_until - time.monotonic():.0f}s for kwok's periodic status reports to start")
            time.sleep(max(0.0, settle_until - time.monotonic()))
        return controller

    def measure_idle(self, api: client.ApiClient, controller: ManagedProcess) -> Idle:
        """Memory and CPU with nothing failing, and the node events the controller receives meanwhile."""
        core = client.CoreV1Api(api)
        others = {name: [p.pid] for name, p in self.cp.processes.items()}
        others["kwok (both)"] = [p.pid for p in self.kwok.values()]
        window = CpuWindow({"controller": process_tree(controller.pid), **others})
        list_rv: Any = core.list_node(limit=1, _preload_content=False)
        counter = NodeEventCounter(api, json.loads(list_rv.data)["metadata"]["resourceVersion"])
        self.load.append(os.getloadavg()[0])
        say(f"idle: measuring {self.options.idle:g}s")
        window.start()
        time.sleep(self.options.idle)
        window.stop()
        node_events = counter.stop()
        rss = rss_mb(controller.pid)
        peak_idle = peak_rss_mb(controller.pid)
        self.load.append(os.getloadavg()[0])
        say(
            f"idle: RSS {rss:.1f} MB, CPU {window.percent('controller'):.2f}% of a core, "
            f"{node_events / window.seconds:.1f} node events/s"
        )
        return Idle(rss, peak_idle, window, node_events, list(others))

    def fail_and_measure(self, api: client.ApiClient, controller: ManagedProcess, idle: Idle) -> SizeResult:
        """Kill group b's kwok; the delay from each failed node's duration elapsing to its Fence."""
        opts = self.options
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        listed: Any = custom.list_cluster_custom_object(GROUP, VERSION, "fences")
        early = sorted({str(f["spec"]["nodeName"]) for f in listed["items"]})
        if early:
            say(
                f"WARNING: {len(early)} Fences before any failure: kwok renewed some leases too late "
                "(an overloaded machine); the idle figures include fencing them"
            )
        failed = {node_name(i) for i in range(1, self.nodes + 1) if failing(i, opts.fail_every)}
        fences = FenceWatch(api)
        failure_cpu = CpuWindow({"controller": process_tree(controller.pid)})
        failure_cpu.start()
        killed_at = time.time()
        self.supervisor.kill(self.kwok["b"])
        say(f"killed kwok for group b: {len(failed)} nodes fail; waiting for their Fences")
        deadline = time.monotonic() + opts.grace + opts.duration + 90
        while fences.count(failed) < len(failed) and time.monotonic() < deadline:
            if not controller.alive():
                raise LabError("controller", controller.exit_summary(), str(controller.log_path))
            time.sleep(0.5)
        failure_cpu.stop()
        fences.stop()
        self.load.append(os.getloadavg()[0])

        # --- delays ---
        delays, skew, detection, missing = [], [], [], []
        by_name = {n["metadata"]["name"]: n for n in list_nodes(core, "bench-group=b")}
        for name in sorted(failed):
            ready = ready_condition(by_name.get(name, {})) or {}
            seen = fences.seen.get(name)
            if seen is None or ready.get("status") != "Unknown":
                missing.append(name)
                continue
            transition = parse_time(ready["lastTransitionTime"]).timestamp()
            due = transition + opts.duration
            delays.append(seen - due)
            detection.append(transition - killed_at)
            since = fences.annotations[name].get("remediator.io/unhealthy-since")
            if since:
                skew.append(parse_time(since).timestamp() - due)
        phase_delays = self._phase_delays(custom, failed, by_name, opts.duration)
        return SizeResult(
            nodes=self.nodes,
            failed=len(failed),
            setup=self.setup,
            rss_mb=idle.rss,
            peak_rss_mb=idle.peak_rss,
            peak_rss_after_mb=peak_rss_mb(controller.pid),
            idle_cpu_percent=idle.window.percent("controller"),
            idle_seconds=idle.window.seconds,
            idle_node_events=idle.node_events,
            others_cpu_percent={name: idle.window.percent(name) for name in idle.others},
            early_fences=early,
            delays=delays,
            missing=missing,
            annotation_skew=skew,
            phase_delays=phase_delays,
            detection=detection,
            failure_cpu_seconds=failure_cpu.used["controller"],
            failure_window=failure_cpu.seconds,
            load=self.load,
        )

    @staticmethod
    def _phase_delays(
        custom: client.CustomObjectsApi, failed: set[str], nodes: dict[str, Any], duration: float
    ) -> list[float]:
        """From the duration elapsing to the first ``status.phases[].startedAt`` (the Fence
        controller's first step, microsecond precision) -- later than creation, for comparison."""
        listed: Any = custom.list_cluster_custom_object(GROUP, VERSION, "fences")
        out = []
        for fence in listed["items"]:
            node = str((fence.get("spec") or {}).get("nodeName"))
            phases = (fence.get("status") or {}).get("phases") or []
            ready = ready_condition(nodes.get(node, {})) or {}
            if node in failed and phases and phases[0].get("startedAt") and ready.get("lastTransitionTime"):
                due = parse_time(ready["lastTransitionTime"]).timestamp() + duration
                out.append(parse_time(phases[0]["startedAt"]).timestamp() - due)
        return out

    def close(self) -> None:
        self.supervisor.stop_all()
        for proc in self.supervisor.running():
            self.supervisor.kill(proc)
        if not self.options.keep:
            shutil.rmtree(self.paths.root, ignore_errors=True)


# --- report --------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 10 values is the maximum)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def print_table(results: list[SizeResult]) -> None:
    header = (
        f"{'nodes':>6} {'failed':>6} {'RSS MB':>7} {'peak MB':>8} {'idle CPU %':>10} "
        f"{'node ev/s':>9} {'delay p50':>9} {'p99':>7} {'max':>7} {'fences':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.nodes:>6} {r.failed:>6} {r.rss_mb:>7.1f} {r.peak_rss_after_mb:>8.1f} "
            f"{r.idle_cpu_percent:>10.2f} {r.idle_node_events / r.idle_seconds:>9.1f} "
            f"{percentile(r.delays, 50):>8.3f}s {percentile(r.delays, 99):>6.3f}s "
            f"{max(r.delays, default=math.nan):>6.3f}s {len(r.delays):>3}/{r.failed:<3}"
        )
    if len(results) >= 2:
        small, large = results[0], results[-1]
        factor = large.nodes / small.nodes
        print()
        print(f"growth {small.nodes} -> {large.nodes} nodes (x{factor:g} nodes):")
        per_k = (large.rss_mb - small.rss_mb) / ((large.nodes - small.nodes) / 1000)
        print(
            f"  RSS          x{large.rss_mb / small.rss_mb:.2f}   "
            f"(marginal {per_k:.1f} MB per 1,000 nodes; "
            f"fixed part ~{small.rss_mb - per_k * small.nodes / 1000:.0f} MB)"
        )
        cpu_ratio = large.idle_cpu_percent / small.idle_cpu_percent if small.idle_cpu_percent else math.inf
        print(f"  idle CPU     x{cpu_ratio:.2f}")
        p99_small, p99_large = percentile(small.delays, 99), percentile(large.delays, 99)
        print(f"  delay p99    x{p99_large / p99_small:.2f}" if p99_small > 0 else "  delay p99    n/a")


def print_details(results: list[SizeResult], options: Options) -> None:
    print()
    print("details:")
    for r in results:
        steps = ", ".join(f"{k} {v:.0f}s" for k, v in r.setup.items())
        print(f"  {r.nodes} nodes: {steps}")
        others = ", ".join(f"{k} {v:.0f}%" for k, v in r.others_cpu_percent.items())
        print(f"    idle window {r.idle_seconds:.0f}s; other processes' CPU (% of a core): {others}")
        if r.idle_node_events:
            # kwok's status reports come in waves, so node events/s differ from run to run: the
            # controller's CPU per node event is the figure that carries over to another rate.
            per_event = r.idle_cpu_percent / 100 * r.idle_seconds / r.idle_node_events * 1000
            print(f"    controller CPU per node event while idle: {per_event:.2f} ms (all its work / events)")
        print(
            f"    controller peak RSS (VmHWM) {r.peak_rss_mb:.1f} MB while idle, "
            f"{r.peak_rss_after_mb:.1f} MB at the end"
        )
        print(
            f"    failure: detection (kwok killed -> Ready=Unknown LTT) "
            f"{min(r.detection, default=math.nan):.0f}-{max(r.detection, default=math.nan):.0f}s; "
            f"controller used {r.failure_cpu_seconds:.1f} CPU-s in {r.failure_window:.0f}s "
            f"(node transitions, policy evaluations, {len(r.delays)} Fences created and run to Failed)"
        )
        if r.phase_delays:
            print(
                f"    due -> Fence controller's first phases[].startedAt: "
                f"p50 {percentile(r.phase_delays, 50):.3f}s "
                f"p99 {percentile(r.phase_delays, 99):.3f}s (for comparison)"
            )
        if r.annotation_skew:
            print(
                f"    the Fences' unhealthy-since annotation minus (LTT + duration): "
                f"{min(r.annotation_skew):+.3f}..{max(r.annotation_skew):+.3f}s (0 = same reference)"
            )
        if r.early_fences:
            print(
                f"    NOT IDLE -- Fences before the failure (kwok renewed these leases late): "
                f"{len(r.early_fences)}: {', '.join(r.early_fences[:5])}"
            )
        if r.missing:
            print(
                f"    no Fence (or not Unknown) by the deadline: {len(r.missing)}: {', '.join(r.missing[:5])}"
            )
        print(f"    1-min load average: {' -> '.join(f'{v:.1f}' for v in r.load)} ({os.cpu_count()} CPUs)")
    print()
    print("conditions:")
    print(
        f"  policy: Ready=Unknown for {options.duration:g}s, minHealthy 51%; "
        f"{100 / options.fail_every:g}% of nodes fail (their kwok is killed)"
    )
    if options.lease_fast_path:
        print(
            f"  --lease-fast-path: the controller also watches every node Lease (about N/"
            f"{options.lease_duration / 4:g} renewals/s); leaseStaleAfter {LEASE_STALE_AFTER}, so detection "
            "still comes from Ready=Unknown"
        )
    print(
        f"  kcm: node-monitor-grace-period {options.grace:g}s, period 1s; "
        f"kwok: lease {options.lease_duration}s "
        f"(renewed every {options.lease_duration / 4:g}s), lab stages, lease parallelism 16"
    )
    print(
        "  delay = Fence ADDED received on this process's watch (local clock) - "
        "(Ready.lastTransitionTime + duration);"
    )
    print("          lastTransitionTime has 1 s resolution: from the true transition, up to 1 s less")
    print(
        "  RSS: VmRSS of the controller's process tree after the idle window; CPU: utime+stime delta / wall"
    )
    print("  targets (issue 5, at 5,000 nodes): RSS <= 250 MB, idle CPU <= 5%, p99 delay <= 1 s, linear")


# --- main ----------------------------------------------------------------------------------------


def find_binaries() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kwok"):
        path = binaries_mod.find_binary(name)
        if path is None:
            raise SystemExit(f"{name} is not built; run `.venv/bin/python -m remediator.lab.binaries`")
        found[name] = path
    return found


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM tears down like Ctrl-C does."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--nodes takes numbers like 1000,5000: {exc}") from exc
    if not sizes or any(n < 100 for n in sizes):
        raise argparse.ArgumentTypeError("--nodes: at least 100 nodes per size")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=parse_sizes, default=[1000, 5000], help="sizes (default 1000,5000)")
    parser.add_argument("--duration", type=float, default=5.0, help="the policy's Ready=Unknown duration (s)")
    parser.add_argument("--idle", type=float, default=30.0, help="idle measurement window (s)")
    parser.add_argument("--fail-percent", type=float, default=1.0, help="%% of nodes that fail (default 1)")
    parser.add_argument(
        "--lease-duration", type=int, default=80, help="kwok's node lease (s), renewed every 1/4"
    )
    parser.add_argument("--grace", type=float, default=60.0, help="kcm node-monitor-grace-period (s)")
    parser.add_argument("--workers", type=int, default=16, help="threads creating nodes")
    parser.add_argument("--profile", type=Path, help="run the controller under cProfile; .prof files here")
    parser.add_argument("--keep", action="store_true", help="keep the work directories (logs)")
    parser.add_argument(
        "--lease-fast-path",
        action="store_true",
        help="run the controller with --lease-fast-path (it also watches every node Lease)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.fail_percent <= 50:
        parser.error("--fail-percent must be in (0, 50]")
    options = Options(
        duration=args.duration,
        idle=args.idle,
        fail_every=max(1, round(100 / args.fail_percent)),
        lease_duration=args.lease_duration,
        grace=args.grace,
        workers=args.workers,
        profile=args.profile,
        keep=args.keep,
        lease_fast_path=args.lease_fast_path,
    )
    binaries = find_binaries()
    started = time.monotonic()
    results: list[SizeResult] = []
    with terminate_as_interrupt():
        for nodes in args.nodes:
            root = Path(tempfile.mkdtemp(prefix=f"scale-bench-{nodes}-", dir="/tmp"))
            say(f"--- {nodes} nodes (work dir {root}) ---")
            run = SizeRun(nodes, options, root, binaries)
            try:
                results.append(run.run())
            finally:
                run.close()
                say("torn down" + (f"; logs kept in {root}" if options.keep else ""))
    print()
    print_table(results)
    print_details(results, options)
    print(f"\ntotal run time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
