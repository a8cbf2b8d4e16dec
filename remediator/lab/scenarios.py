"""Failure scenarios on a running lab, each checking its own expected outcome.

A scenario creates a few VMs spread over the hosts, picks the host that runs the most of them,
breaks it (or several hosts, or the controller) in one of the ways below, follows the remediation,
and checks the outcome: the Fence succeeded, every VM of the failed host runs again elsewhere and
only after its host was read back off, no VM ever ran on two hosts at once (sampled from every
host's libvirt every 100 ms), and no VM was lost. It returns a :class:`ScenarioResult` with the
per-phase timestamps, ``mttr_seconds`` and a :class:`~remediator.lab.timeline.Timeline`.

=================  =====================================================================
power-loss         the host's power is cut
kubelet-hang       the host stays powered, its VMs keep running, its node stops reporting
partition          the host (kubelet, handler) is cut off from the control plane; VMs run on
bmc-down           kubelet hang, and the host's first fence level (Redfish) does not answer
controller-crash   power loss, and the remediation controller is killed mid-fence
maintenance        the host is drained; LiveMigrate VMs move live and keep running
storm              most hosts fail at once: nothing is fenced, the storm is reported
=================  =====================================================================
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from remediator.errors import ConfigError, LabError, LabNotRunning
from remediator.lab import client as lab_client
from remediator.lab.controller import LAB_POLICY
from remediator.lab.state import LabPaths
from remediator.lab.timeline import Timeline
from vmcore import api as vapi
from vmcore.safety import running_domains

SCENARIOS = (
    "power-loss",
    "kubelet-hang",
    "partition",
    "bmc-down",
    "controller-crash",
    "maintenance",
    "storm",
)
NAMESPACE = "lab-scenarios"
GROUP, VERSION = "remediator.io", "v1alpha1"
SAMPLE_INTERVAL = 0.1
STEP_TIMEOUT = 120.0

#: Reports progress of a scenario: one line, e.g. "[ 10.6s] lab-host-2 Ready=Unknown".
Say = Callable[[str], None]


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


@dataclass
class ScenarioResult:
    scenario: str
    host: str | None
    passed: bool = False
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    times: dict[str, datetime] = field(default_factory=dict)
    vms: dict[str, dict[str, Any]] = field(default_factory=dict)
    double_running: int = 0
    vms_lost: int = 0
    timeline: Timeline | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        return ok

    def seconds(self, key: str) -> float | None:
        start, at = self.times.get("failure"), self.times.get(key)
        return round((at - start).total_seconds(), 3) if start and at else None

    @property
    def mttr_seconds(self) -> float | None:
        return self.seconds("vms-running")

    def split(self) -> dict[str, float | None]:
        """Detection, fencing and VM restart, and the remediation's own share (decision -> VMs)."""

        def between(a: str, b: str) -> float | None:
            x, y = self.times.get(a), self.times.get(b)
            return round((y - x).total_seconds(), 3) if x and y else None

        return {
            "detection": between("failure", "fence-created"),
            "fencing": between("fence-created", "fence-verified"),
            "vmRestart": between("fence-verified", "vms-running"),
            "remediationOwn": between("fence-created", "vms-running"),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "host": self.host,
            "outcome": "passed" if self.passed else "failed",
            "mttr_seconds": self.mttr_seconds,
            "phases": self.split(),
            "timestamps": {k: v.isoformat() for k, v in sorted(self.times.items(), key=lambda kv: kv[1])},
            "seconds": {k: self.seconds(k) for k in self.times},
            "double_running": self.double_running,
            "vms_lost": self.vms_lost,
            "vms": self.vms,
            "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks],
        }


class DomainMonitor(threading.Thread):
    """Samples every host's libvirt: where each domain runs, and any moment it runs twice."""

    def __init__(self, host_uris: dict[str, str], domains: set[str]) -> None:
        super().__init__(name="domain-monitor", daemon=True)
        self.host_uris = host_uris
        self.domains = domains
        self.samples: list[tuple[datetime, dict[str, tuple[str, ...]]]] = []
        self.double_moments = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            at = datetime.now(UTC)
            where: dict[str, list[str]] = {d: [] for d in self.domains}
            for host, uri in self.host_uris.items():
                for domain in running_domains(uri) or set():
                    if domain in where:
                        where[domain].append(host)
            sample = {d: tuple(sorted(h)) for d, h in where.items()}
            if any(len(h) > 1 for h in sample.values()) and self._still_double(sample):
                self.double_moments += 1
            self.samples.append((at, sample))
            self._stop_event.wait(SAMPLE_INTERVAL)

    def _still_double(self, sample: dict[str, tuple[str, ...]]) -> bool:
        """Hosts are read one after another: re-read a suspected double before counting it."""
        for domain, hosts in sample.items():
            if (
                len(hosts) > 1
                and sum(1 for h in hosts if domain in (running_domains(self.host_uris[h]) or ())) > 1
            ):
                return True
        return False

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def where(self, domain: str) -> tuple[str, ...]:
        return self.samples[-1][1].get(domain, ()) if self.samples else ()

    def first_running_elsewhere(
        self, domain: str, old_host: str, after: datetime
    ) -> tuple[datetime, str] | None:
        for at, sample in self.samples:
            hosts = sample.get(domain, ())
            if at >= after and hosts and old_host not in hosts:
                return at, hosts[0]
        return None

    def down_spans(self, domain: str) -> list[tuple[datetime, datetime | None]]:
        spans: list[tuple[datetime, datetime | None]] = []
        start: datetime | None = None
        for at, sample in self.samples:
            if not sample.get(domain) and start is None:
                start = at
            elif sample.get(domain) and start is not None:
                spans.append((start, at))
                start = None
        if start is not None:
            spans.append((start, None))
        return spans


class Lab:
    """The running lab, as a scenario sees it."""

    def __init__(self, paths: LabPaths) -> None:
        if not lab_client.is_running(paths):
            raise LabNotRunning(str(paths.root))
        self.paths = paths
        self.api = kube.api_client(paths.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        status = lab_client.request(paths, {"command": "status"})["lab"]
        if not status.get("controller"):
            raise ConfigError(f"the lab in {paths.root} runs no controller; start it without --no-controller")
        self.hosts: list[str] = [str(h["name"]) for h in status.get("hosts", [])]
        self.host_uris = {
            h["name"]: h["vmcore"]["libvirtUri"] for h in status.get("hosts", []) if "vmcore" in h
        }

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        return lab_client.request(self.paths, body)

    def ready(self, node: str) -> str | None:
        return kube.node_ready_status(self.core.read_node(node))

    def ready_since(self, node: str, status: str) -> datetime | None:
        node_obj = self.core.read_node(node)
        for condition in node_obj.status.conditions or [] if node_obj.status else []:
            if condition.type == "Ready" and condition.status == status:
                return _parse(condition.last_transition_time)
        return None

    def fences(self, node: str) -> list[dict[str, Any]]:
        items: Any = self.custom.list_cluster_custom_object(
            GROUP, VERSION, "fences", label_selector=f"remediator.io/node={node}"
        )
        return list(items["items"])

    def policy_status(self) -> dict[str, Any]:
        body: Any = self.custom.get_cluster_custom_object(GROUP, VERSION, "nodehealthchecks", LAB_POLICY)
        return dict(body.get("status") or {})

    def vm(self, name: str) -> dict[str, Any]:
        body: Any = self.custom.get_namespaced_custom_object(
            vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.VM_PLURAL, name
        )
        return dict(body)


def _wait(check: Callable[[], Any], what: str, timeout: float = STEP_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError("scenario", f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class ScenarioRun:
    """One run of one scenario."""

    def __init__(self, lab: Lab, name: str, say: Say, vms_per_host: int = 2, host: str | None = None) -> None:
        if name not in SCENARIOS:
            raise ConfigError(f"unknown scenario {name!r} (scenarios: {', '.join(SCENARIOS)})")
        if host is not None and host not in lab.hosts:
            raise ConfigError(f"unknown host {host!r} (hosts: {', '.join(lab.hosts)})")
        self.lab = lab
        self.name = name
        self.say_line = say
        self.vm_count = vms_per_host * len(lab.hosts)
        self.requested_host = host
        self.tag = uuid.uuid4().hex[:5]
        self.result = ScenarioResult(name, host)
        self.t0 = time.monotonic()
        self.monitor: DomainMonitor | None = None
        self.vm_names: list[str] = []
        self.placement: dict[str, str] = {}
        self.fence: dict[str, Any] = {}  # the Fence this run followed, as it finished

    def say(self, text: str) -> None:
        self.say_line(f"[{time.monotonic() - self.t0:6.1f}s] {text}")

    # --- set-up and tear-down -------------------------------------------------------------------

    def _create_vms(self) -> None:
        kube.ensure_namespace(self.lab.core, NAMESPACE)
        for i in range(self.vm_count):
            name = f"{self.name}-{self.tag}-{i + 1}"
            body = {
                "apiVersion": f"{vapi.GROUP}/{vapi.VERSION}",
                "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "memory": {"guest": "64Mi"},
                    "runStrategy": "Always",
                    "evictionStrategy": "LiveMigrate",
                },
            }
            self.lab.custom.create_namespaced_custom_object(
                vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.VM_PLURAL, body
            )
            self.vm_names.append(name)
        self.say(f"created {self.vm_count} VMs in namespace {NAMESPACE}")
        self.monitor = DomainMonitor(
            self.lab.host_uris, {vapi.domain_name(NAMESPACE, n) for n in self.vm_names}
        )
        self.monitor.start()

        def all_running() -> bool:
            return all(len(self.monitor.where(vapi.domain_name(NAMESPACE, n))) == 1 for n in self.vm_names)  # type: ignore[union-attr]

        _wait(all_running, "every VM to run", 180)
        for n in self.vm_names:
            self.placement[n] = self.monitor.where(vapi.domain_name(NAMESPACE, n))[0]
        spread = {h: sum(1 for p in self.placement.values() if p == h) for h in self.lab.hosts}
        self.say("VMs running: " + ", ".join(f"{h} {c}" for h, c in spread.items()))

    def _ready_check(self, host: str) -> Callable[[], bool]:
        return lambda: self.lab.ready(host) == "True"

    def _pick_host(self) -> str:
        if self.requested_host:
            return self.requested_host
        counts = {h: sum(1 for p in self.placement.values() if p == h) for h in self.lab.hosts}
        return max(self.lab.hosts, key=lambda h: (counts[h], h))

    def _cleanup(self, hosts: list[str]) -> None:
        for host in hosts:
            self.lab.request({"command": "heal", "host": host})
        for host in hosts:
            _wait(self._ready_check(host), f"{host} Ready again", 120)
        for name in self.vm_names:
            try:
                self.lab.custom.delete_namespaced_custom_object(
                    vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.VM_PLURAL, name
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
        # The next run must not find this one's remediation still in its healthy delay, nor the
        # policy still cooling down after a storm.
        _wait(self._policy_settled, "the policy to settle", 120)

    def _policy_settled(self) -> bool:
        status = self.lab.policy_status()
        storm = next((c for c in status.get("conditions", []) if c["type"] == "StormActive"), None)
        return not status.get("remediations") and (storm is None or storm.get("reason") == "WithinLimits")

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> ScenarioResult:
        failed_hosts: list[str] = []
        try:
            self._create_vms()
            host = self._pick_host()
            self.result.host = host
            runner = getattr(self, f"_run_{self.name.replace('-', '_')}")
            failed_hosts = runner(host) or [host]
        finally:
            if self.monitor is not None:
                self.monitor.stop()
                self.result.double_running = self.monitor.double_moments
            self._finish()
            try:
                self._cleanup(failed_hosts)
            except (LabError, ApiException) as exc:
                self.result.check("clean-up", False, str(exc))
        self.result.passed = all(ok for _, ok, _ in self.result.checks)
        return self.result

    def _fail(self, host: str, mode: str) -> datetime:
        reply = self.lab.request({"command": "fail", "host": host, "mode": mode})
        at = datetime.fromtimestamp(float(reply["at"]), UTC)
        self.result.times.setdefault("failure", at)
        if mode == "power-loss":
            self.result.times.setdefault("power-off", at)
        self.say(f"{host}: {reply['message']}")
        return at

    def _follow_fence(
        self, host: str, after: datetime, on_phase: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Wait for the Fence of ``host`` created after ``after`` to finish, narrating its phases."""
        unknown = _wait(lambda: self.lab.ready_since(host, "Unknown"), f"{host} to be marked Ready=Unknown")
        self.result.times["detected"] = unknown
        self.say(f"{host}: Ready=Unknown (kube-controller-manager)")

        def fence() -> dict[str, Any] | None:
            fresh = [
                f
                for f in self.lab.fences(host)
                if (_parse(f["metadata"]["creationTimestamp"]) or after) >= after.replace(microsecond=0)
            ]
            return fresh[-1] if fresh else None

        body: Any = _wait(fence, f"a Fence for {host}")
        name = body["metadata"]["name"]
        self.say(f"Fence {name} created by NodeHealthCheck {LAB_POLICY}")
        seen: set[str] = set()
        while True:
            body = self.lab.custom.get_cluster_custom_object(GROUP, VERSION, "fences", name)
            status = body.get("status") or {}
            for phase in status.get("phases", []):
                if phase["phase"] not in seen:
                    seen.add(phase["phase"])
                    self.say(f"Fence {name}: {phase['phase']}")
                    if on_phase is not None:
                        on_phase(phase["phase"])
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(0.05)
        phases = status.get("phases") or []
        if phases:
            self.result.times["fence-created"] = _parse(phases[0]["startedAt"])  # type: ignore[assignment]
        facts = status.get("facts") or {}
        for key, fact in (
            ("fence-verified", "powerOffVerifiedAt"),
            ("released", "releasedAt"),
            ("host-on", "powerOnVerifiedAt"),
        ):
            if facts.get(fact):
                self.result.times[key] = _parse(facts[fact])  # type: ignore[assignment]
        self.result.check(
            "fence succeeded", status.get("phase") == "Succeeded", f"{name}: {status.get('message')}"
        )
        verified = self.result.times.get("fence-verified")
        if verified is not None:
            self.result.times.setdefault("power-off", verified)
        self.fence = dict(body)
        return self.fence

    def _check_vms_back(self, host: str) -> None:
        """Every VM of ``host`` runs again on another host, and only after the fence was verified."""
        assert self.monitor is not None
        verified = self.result.times.get("fence-verified")
        failure = self.result.times["failure"]
        moved = [n for n, h in self.placement.items() if h == host]

        def back() -> bool:
            return all(
                (w := self.monitor.where(vapi.domain_name(NAMESPACE, n))) and host not in w  # type: ignore[union-attr]
                for n in moved
            )

        _wait(back, f"the VMs of {host} to run elsewhere", 180)
        last = failure
        for n in moved:
            found = self.monitor.first_running_elsewhere(vapi.domain_name(NAMESPACE, n), host, failure)
            if found is None:
                continue
            at, where = found
            last = max(last, at)
            self.result.vms[n] = {
                "from": host,
                "to": where,
                "runningAgainSeconds": round((at - failure).total_seconds(), 3),
            }
            self.say(f"VM {NAMESPACE}/{n} running on {where}")
            if verified is not None:
                self.result.check(
                    f"{n} restarted only after its host was verified off",
                    at >= verified,
                    f"running at {at.isoformat()}, host verified off at {verified.isoformat()}",
                )
        self.result.times["vms-running"] = last

    def _finish(self) -> None:
        """Count lost VMs and double runs; build the timeline."""
        if self.monitor is None:
            return
        lost = [n for n in self.vm_names if not self.monitor.where(vapi.domain_name(NAMESPACE, n))]
        self.result.vms_lost = len(lost)
        self.result.check("no VM lost", not lost, ", ".join(lost))
        self.result.check(
            "no VM ever ran on two hosts",
            self.monitor.double_moments == 0,
            f"{self.monitor.double_moments} moments",
        )
        start = self.result.times.get("failure")
        if start is None:
            return
        tl = Timeline(f"{self.name} of {self.result.host}", start)
        host = self.result.host or ""
        for key, kind in (
            ("failure", "failure"),
            ("detected", "detected"),
            ("fence-created", "fence-created"),
            ("fence-verified", "fence-verified"),
            ("released", "released"),
            ("host-back", "host-back"),
        ):
            tl.mark(host, kind, self.result.times.get(key))
        powered_on = self.result.times.get("host-on") or self.result.times.get("host-back")
        tl.span(host, "off", self.result.times.get("power-off"), powered_on)
        # The failed host's VMs; the others kept running and would only add empty lanes.
        for n in (n for n in self.vm_names if self.placement.get(n) == host):
            domain = vapi.domain_name(NAMESPACE, n)
            for begin, end in self.monitor.down_spans(domain):
                if begin >= start:
                    tl.span(n, "down", begin, end, lane_kind="vm")
            info = self.result.vms.get(n)
            if info and "runningAgainSeconds" in info:
                tl.mark(
                    n,
                    "vm-running",
                    start + timedelta(seconds=info["runningAgainSeconds"]),
                    f"on {info['to']}",
                    lane_kind="vm",
                )
        self.result.timeline = tl

    # --- the scenarios --------------------------------------------------------------------------

    def _remediate(self, host: str, mode: str, on_phase: Callable[[str], None] | None = None) -> list[str]:
        failed_at = self._fail(host, mode)
        self._follow_fence(host, failed_at, on_phase)
        self._check_vms_back(host)
        back = _wait(
            lambda: self.lab.ready(host) == "True" and self.lab.ready_since(host, "True"), f"{host} back", 120
        )
        self.result.times["host-back"] = back
        self.say(f"{host}: Ready again")
        return [host]

    def _run_power_loss(self, host: str) -> list[str]:
        return self._remediate(host, "power-loss")

    def _run_kubelet_hang(self, host: str) -> list[str]:
        hosts = self._remediate(host, "kubelet-hang")
        self._check_power_off_sent("the hung host was switched off")
        return hosts

    def _run_partition(self, host: str) -> list[str]:
        hosts = self._remediate(host, "partition")
        self._check_power_off_sent("the partitioned host was switched off")
        return hosts

    def _run_bmc_down(self, host: str) -> list[str]:
        hosts = self._remediate(host, "bmc-down")
        attempts = [a for a in self.fence["status"].get("attempts", []) if a["operation"] == "PowerOff"]
        self.result.check(
            "Redfish failed, IPMI fenced",
            bool(attempts)
            and attempts[-1]["levelType"] == "ipmi"
            and attempts[-1]["result"] == "Succeeded"
            and any(a["levelType"] == "redfish" and a["result"] == "Failed" for a in attempts),
            "; ".join(f"{a['levelType']} {a['result']}" for a in attempts),
        )
        return hosts

    def _run_controller_crash(self, host: str) -> list[str]:
        killed: list[str] = []

        def crash(phase: str) -> None:
            if phase in ("Isolating", "PoweringOff") and not killed:
                self.lab.request({"command": "controller", "action": "kill"})
                killed.append(phase)
                self.say(f"controller killed during {phase}")
                self.lab.request({"command": "controller", "action": "start"})
                self.say("controller started again")

        hosts = self._remediate(host, "power-loss", on_phase=crash)
        self.result.check("controller was killed mid-fence", bool(killed), ", ".join(killed))
        return hosts

    def _run_storm(self, host: str) -> list[str]:
        hosts = self.lab.hosts[: len(self.lab.hosts) // 2 + 1]
        started = datetime.now(UTC)
        for h in hosts:
            self._fail(h, "kubelet-hang")
        storm = _wait(
            lambda: next(
                (
                    c
                    for c in self.lab.policy_status().get("conditions", [])
                    if c["type"] == "StormActive" and c["status"] == "True"
                ),
                None,
            ),
            "the policy to report a storm",
        )
        self.result.times["detected"] = datetime.now(UTC)
        self.say(f"StormActive: {storm['message']}")
        # Stay failed a while past the policy's duration: still nothing may be fenced.
        _wait(
            lambda: all(
                (s := self.lab.ready_since(h, "Unknown")) and (datetime.now(UTC) - s).total_seconds() > 5
                for h in hosts
            ),
            "the storm to last",
            60,
        )
        fenced = [
            f["metadata"]["name"]
            for h in hosts
            for f in self.lab.fences(h)
            if (_parse(f["metadata"]["creationTimestamp"]) or started) >= started.replace(microsecond=0)
        ]
        self.result.check("nothing fenced during the storm", not fenced, ", ".join(fenced))
        return hosts

    def _run_maintenance(self, host: str) -> list[str]:
        self.result.times["failure"] = datetime.now(UTC)
        self.say(f"{host}: draining for maintenance")
        kube.set_node_unschedulable(self.lab.api, host, True)
        moved = [n for n, h in self.placement.items() if h == host]
        for pod in kube.node_pods(self.lab.api, host):
            if pod.metadata is None or pod.metadata.namespace != NAMESPACE:
                continue
            eviction = {"metadata": {"name": pod.metadata.name, "namespace": NAMESPACE}}
            try:
                self.lab.core.create_namespaced_pod_eviction(
                    str(pod.metadata.name), NAMESPACE, kube.body(eviction)
                )
            except ApiException as exc:
                if exc.status != 429:  # 429: blocked by the VM's disruption budget -- migrating instead
                    raise
        monitor = self.monitor
        assert monitor is not None
        _wait(
            lambda: all(
                (w := monitor.where(vapi.domain_name(NAMESPACE, n))) and host not in w for n in moved
            ),
            f"the VMs of {host} to move",
            180,
        )
        self.result.times["vms-running"] = datetime.now(UTC)
        for n in moved:
            down = [
                s
                for s in monitor.down_spans(vapi.domain_name(NAMESPACE, n))
                if s[0] >= self.result.times["failure"]
            ]
            longest = max(((e or datetime.now(UTC)) - b).total_seconds() for b, e in down) if down else 0.0
            self.result.vms[n] = {
                "from": host,
                "to": monitor.where(vapi.domain_name(NAMESPACE, n))[0],
                "longestGapSeconds": round(longest, 3),
            }
            # A live migration keeps the guest running; a sample may fall into the sub-second
            # hand-over, a restart would leave a gap of seconds.
            self.result.check(f"{n} moved live", longest < 1.0, f"longest gap seen {longest:.2f}s")
        kube.set_node_unschedulable(self.lab.api, host, False)
        return []

    def _check_power_off_sent(self, what: str) -> None:
        off = [
            a
            for a in self.fence["status"].get("attempts", [])
            if a["operation"] == "PowerOff" and a["result"] == "Succeeded"
        ]
        self.result.check(what, bool(off) and off[-1]["commandSent"], "power-off command sent and read back")


def run_scenario(paths: LabPaths, name: str, say: Say, host: str | None = None) -> ScenarioResult:
    return ScenarioRun(Lab(paths), name, say, host=host).run()


def summarize(results: list[ScenarioResult]) -> dict[str, Any]:
    """Median and worst of ``mttr_seconds`` and of each phase over repeated runs."""
    mttrs = [r.mttr_seconds for r in results if r.mttr_seconds is not None]
    phases: dict[str, dict[str, float]] = {}
    for key in ("detection", "fencing", "vmRestart", "remediationOwn"):
        values = [v for r in results if (v := r.split()[key]) is not None]
        if values:
            phases[key] = {"median": round(statistics.median(values), 3), "worst": round(max(values), 3)}
    return {
        "runs": len(results),
        "passed": sum(1 for r in results if r.passed),
        "mttr_seconds": {"median": round(statistics.median(mttrs), 3), "worst": round(max(mttrs), 3)}
        if mttrs
        else None,
        "phases": phases,
        "double_running": sum(r.double_running for r in results),
        "vms_lost": sum(r.vms_lost for r in results),
    }
