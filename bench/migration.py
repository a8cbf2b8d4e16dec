"""Live migration: vmcore's migration against a raw ``virsh migrate --live``, in one run.

Between the *same* two lab hosts (two private libvirtds, each in its own mount namespace, under the lab
daemon's subreaper) and with *same-sized* guests (64 MiB, 1 vCPU, diskless, the XML vmcore builds;
KVM when /dev/kvm works, TCG otherwise), it measures per round:

* ``VirtualMachineMigration`` -- vmcore end to end: create the migration object, the controller makes
  a target pod, the real kube-scheduler places it, the target's handler prepares, the source's
  handler migrates, the controller hands over. Wall = object created -> ``phase: Succeeded`` seen by
  this client; downtime = ``status.downtimeMs`` (libvirt's measurement).
* ``handler migrate call`` -- ``vmcore.virt.Hypervisor.migrate`` (the call the handler makes: peer to
  peer, listen address 127.0.0.1) on a guest that no handler manages.
* ``virsh migrate --live --p2p`` and ``virsh migrate --live`` (managed) -- raw virsh between the same
  two daemons, ``--migrateuri tcp://127.0.0.1 --listen-address 127.0.0.1``; wall = the virsh process.

Downtime for the raw rows is libvirt's completed-job statistic (``downtime``) read on the target.
Guests migrate back and forth; the method order rotates every round. Prints medians (and p90) and
the ratio of each row to ``virsh migrate --live --p2p``. A benchmark: it asserts nothing.

    .venv/bin/python bench/migration.py [--rounds 7] [--state-dir DIR]

Without ``--state-dir`` it starts a 2-host lab of its own in a temporary directory (~25 s) and stops
it at the end; with it, it uses the running lab there (its first two hosts).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import libvirt

from remediator import kube
from remediator.lab import client as lab_client
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers
from vmcore import api as vapi
from vmcore.domain import build_domain_xml
from vmcore.virt import Hypervisor, kvm_usable, peer_uri

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # failures are raised; don't also print them

NAMESPACE = "default"
MEMORY_MIB = 64
TIMEOUT = 120.0

Sample = tuple[float, float | None]  # (wall seconds, downtime ms)


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def _completed_downtime(uri: str, name: str) -> float | None:
    conn = libvirt.open(uri)
    try:
        stats = conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()
    downtime = stats.get("downtime")
    return float(downtime) if downtime is not None else None


def _raw_guest(uri: str, name: str) -> None:
    """A guest no handler manages (its name is not NAMESPACE_NAME), with vmcore's XML."""
    spec = vapi.DomainSpec(NAMESPACE, "bench", str(uuid.uuid4()), vapi.VmSpec(memory_mib=MEMORY_MIB))
    xml = build_domain_xml(spec, "kvm" if kvm_usable() else "qemu")
    xml = xml.replace(f"<name>{spec.domain_name}</name>", f"<name>{name}</name>")
    conn = libvirt.open(uri)
    try:
        conn.createXML(xml, 0)
    finally:
        conn.close()


def _where(uris: dict[str, str], name: str) -> str:
    for host, uri in uris.items():
        conn = libvirt.open(uri)
        try:
            if name in {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}:
                return host
        finally:
            conn.close()
    raise RuntimeError(f"{name} runs nowhere")


class Bench:
    def __init__(self, paths: LabPaths) -> None:
        self.paths = paths
        hosts = lab_client.request(paths, {"command": "status"})["lab"]["hosts"]
        self.uris = {h["name"]: h["vmcore"]["libvirtUri"] for h in hosts[:2]}
        self.hosts = list(self.uris)
        from kubernetes import client

        self.custom = client.CustomObjectsApi(kube.api_client(paths.kubeconfig))
        self.vm = f"bench-{uuid.uuid4().hex[:5]}"
        self.raw = f"benchraw{uuid.uuid4().hex[:5]}"
        self.virsh = f"benchvirsh{uuid.uuid4().hex[:5]}"

    def setup(self) -> None:
        body = {
            "apiVersion": vapi.API_VERSION,
            "kind": vapi.VM_KIND,
            "metadata": {"name": self.vm, "namespace": NAMESPACE},
            "spec": {"memory": {"guest": f"{MEMORY_MIB}Mi"}, "evictionStrategy": "LiveMigrate"},
        }
        self.custom.create_namespaced_custom_object(vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.VM_PLURAL, body)
        deadline = time.monotonic() + TIMEOUT
        while self._vm_status().get("phase") != "Running" or not self._vm_status().get("nodeName"):
            if time.monotonic() > deadline:
                raise RuntimeError("the bench VM did not start")
            time.sleep(0.1)
        if self._vm_status()["nodeName"] not in self.hosts:  # keep it between the two measured hosts
            self.vmcore_migration()
        _raw_guest(self.uris[self.hosts[0]], self.raw)
        _raw_guest(self.uris[self.hosts[0]], self.virsh)

    def teardown(self) -> None:
        self.custom.delete_namespaced_custom_object(
            vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.VM_PLURAL, self.vm
        )
        for uri in self.uris.values():
            conn = libvirt.open(uri)
            try:
                for dom in conn.listAllDomains(0):
                    if dom.name() in (self.raw, self.virsh):
                        dom.destroy()
            finally:
                conn.close()

    def _vm_status(self) -> dict[str, Any]:
        vm: Any = self.custom.get_namespaced_custom_object(
            vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.VM_PLURAL, self.vm
        )
        return dict(vm.get("status") or {})

    def _other(self, host: str) -> str:
        return str(self.hosts[1] if host == self.hosts[0] else self.hosts[0])

    def vmcore_migration(self) -> Sample:
        target = self._other(self._vm_status()["nodeName"])
        name = f"bench-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": vapi.API_VERSION,
            "kind": vapi.MIGRATION_KIND,
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"vmName": self.vm, "targetNode": target},
        }
        started = time.monotonic()
        self.custom.create_namespaced_custom_object(
            vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.MIGRATION_PLURAL, body
        )
        while True:
            mig: Any = self.custom.get_namespaced_custom_object(
                vapi.GROUP, vapi.VERSION, NAMESPACE, vapi.MIGRATION_PLURAL, name
            )
            status = mig.get("status") or {}
            if status.get("phase") == "Succeeded":
                wall = time.monotonic() - started
                break
            if status.get("phase") == "Failed" or time.monotonic() - started > TIMEOUT:
                raise RuntimeError(f"migration {name}: {status}")
            time.sleep(0.02)
        # The next round starts from a settled VM (the source pod gone, Ready on the target).
        while self._vm_status().get("activeMigration") or self._vm_status().get("nodeName") != target:
            time.sleep(0.05)
        downtime = status.get("downtimeMs")
        return wall, float(downtime) if downtime is not None else None

    def handler_call(self) -> Sample:
        source = _where(self.uris, self.raw)
        target = self._other(source)
        hv = Hypervisor(self.uris[source])
        hv.connect()
        try:
            started = time.monotonic()
            result = hv.migrate(self.raw, self.uris[target], timeout=TIMEOUT)
            wall = time.monotonic() - started
        finally:
            hv.close()
        return wall, float(result.downtime_ms) if result.downtime_ms is not None else None

    def virsh_migration(self, p2p: bool) -> Sample:
        source = _where(self.uris, self.virsh)
        target = self._other(source)
        argv = ["virsh", "-q", "-c", self.uris[source], "migrate", "--live"]
        if p2p:
            argv.append("--p2p")
        argv += [
            self.virsh,
            peer_uri(self.uris[target]) if p2p else self.uris[target],
            "--migrateuri",
            "tcp://127.0.0.1",
            "--listen-address",
            "127.0.0.1",
        ]
        started = time.monotonic()
        subprocess.run(argv, check=True, capture_output=True, timeout=TIMEOUT)
        wall = time.monotonic() - started
        return wall, _completed_downtime(self.uris[target], self.virsh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--state-dir", type=Path, help="a running lab to use (default: start one)")
    args = parser.parse_args(argv)
    own = args.state_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="bench-mig-") if own else None
    paths = LabPaths(Path(tmp.name) if tmp else args.state_dir.resolve())
    if own:
        print("starting a 2-host lab ...", file=sys.stderr)
        lab_client.start(paths, 2, LabTimers(), timeout=300, controller=False, health_check=False)
    bench = Bench(paths)
    try:
        bench.setup()
        methods: dict[str, Callable[[], Sample]] = {
            "VirtualMachineMigration (end to end)": bench.vmcore_migration,
            "handler migrate call (p2p)": bench.handler_call,
            "virsh migrate --live --p2p": lambda: bench.virsh_migration(True),
            "virsh migrate --live (managed)": lambda: bench.virsh_migration(False),
        }
        names = list(methods)
        results: dict[str, list[Sample]] = {n: [] for n in names}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                sample = methods[name]()
                if round_:
                    results[name].append(sample)
        report(results, bench, args.rounds)
    finally:
        bench.teardown()
        if own:
            lab_client.stop(paths)
            assert tmp is not None
            tmp.cleanup()
    return 0


def report(results: dict[str, list[Sample]], bench: Bench, rounds: int) -> None:
    base = "virsh migrate --live --p2p"
    base_wall = statistics.median(w for w, _ in results[base])
    base_down = statistics.median(d for _, d in results[base] if d is not None)
    print(
        f"conditions: {rounds} rounds (+1 warm-up), {MEMORY_MIB} MiB 1-vCPU diskless guests, "
        f"{'KVM' if kvm_usable() else 'TCG'}, {bench.hosts[0]} <-> {bench.hosts[1]} (two lab libvirtds)"
    )
    header = (
        f"{'method':<38} {'wall median':>11} {'p90':>7} {'x virsh':>8} "
        f"{'downtime median':>16} {'p90':>7} {'x virsh':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, samples in results.items():
        walls = [w for w, _ in samples]
        downs = [d for _, d in samples if d is not None]
        wall = statistics.median(walls)
        down = statistics.median(downs) if downs else float("nan")
        print(
            f"{name:<38} {wall:>10.3f}s {_p90(walls):>6.3f}s {wall / base_wall:>7.2f}x "
            f"{down:>13.0f} ms {(_p90(downs) if downs else float('nan')):>4.0f} ms {down / base_down:>7.2f}x"
        )
    ours = statistics.median(w for w, _ in results["VirtualMachineMigration (end to end)"])
    print(f"target: VirtualMachineMigration wall <= 1.2x virsh --p2p: {ours / base_wall:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
