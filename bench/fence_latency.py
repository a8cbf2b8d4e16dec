"""Fence latency: how long "off, verified" and "on, verified" take through each client, in one run.

Compares, against the *same* BMCs of one realistic host:

* the floor -- a bare client over one open connection: for Redfish a ``requests.Session`` that POSTs
  ``ForceOff``/``On`` and GETs the system until ``PowerState`` reads back; for IPMI a bare pyghmi
  ``Command`` sending Chassis Control and polling Get Chassis Status;
* our drivers -- :func:`remediator.fencing.verify.power_off_verified` / ``power_on_verified`` with
  ``RedfishDriver`` and ``IpmiDriver`` (connected before timing, as the controller keeps them);
* Debian's ``fence_redfish`` and ``fence_ipmilan`` (package fence-agents) with their defaults, one
  process per action as Pacemaker runs them (options on stdin, so no password in argv).

The host is a libvirt "host domain" (a 64 MiB diskless qemu guest, KVM when usable) in a private
libvirtd, exposed by sushy-emulator (Redfish, HTTPS, basic auth) and the lab's pyghmi IPMI BMC.
libvirtd runs under a helper process that made itself a child subreaper and reaps at once
(``remediator.lab.procs``), as in the lab: otherwise qemu's zombie waits for this sandbox's slow PID 1
and every power-off takes 1.5 s longer. (A helper process, not this one: the supervisor's reaper
collects *every* child of its process, which would swallow the exit status of the fence agents.)

Prints medians and p90 over ``--rounds`` rounds (plus one warm-up round), and ratios to the floor.
A benchmark, not a test: it asserts nothing about the figures. Needs root (mount namespaces).

    .venv/bin/python bench/fence_latency.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER = "admin"
#: A throwaway password for BMCs that live for the duration of the benchmark on 127.0.0.1.
PASSWORD = "bench-" + uuid.uuid4().hex[:12]
DOMAIN = "bench-host"
FENCE_REDFISH = "/usr/sbin/fence_redfish"
FENCE_IPMILAN = "/usr/sbin/fence_ipmilan"
OP_TIMEOUT = 60.0


# --- the hardware: a private libvirtd with one host domain, in a subreaper helper process -----------


def hardware_helper(root: Path) -> int:
    """Run in a child process: subreaper + supervisor + libvirtd + the host domain, until stdin closes."""
    from remediator.lab.hardware import Hardware
    from remediator.lab.procs import Supervisor, become_subreaper

    subreaper = become_subreaper()
    supervisor = Supervisor()
    hardware = Hardware(root / "libvirt", supervisor, lambda _name, _on: None)
    try:
        hardware.spawn()
        hardware.connect()
        system_uuid = str(uuid.uuid4())
        hardware.add_host(DOMAIN, system_uuid)
        qemu_pid = int((root / "libvirt" / "run" / "qemu" / f"{DOMAIN}.pid").read_text().strip())
        ready = {
            "uri": hardware.uri,
            "uuid": system_uuid,
            "virt_type": hardware.virt_type,
            "subreaper": subreaper,
            "helper_pid": os.getpid(),
            "qemu_parent_pid": _parent_pid(qemu_pid),
        }
        tmp = root / "hardware.json.tmp"
        tmp.write_text(json.dumps(ready))
        tmp.rename(root / "hardware.json")
        sys.stdin.read()  # until the benchmark closes our stdin (or dies)
    finally:
        hardware.stop()
        supervisor.stop_all()
    return 0


def _parent_pid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class HardwareInfo:
    uri: str
    uuid: str
    virt_type: str
    subreaper: bool
    helper_pid: int
    qemu_parent_pid: int | None


def start_hardware(root: Path, timeout: float = 120.0) -> tuple[subprocess.Popen[bytes], HardwareInfo]:
    log = (root / "hardware.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--hardware-helper", str(root)],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ready = root / "hardware.json"
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the hardware helper failed; see {root / 'hardware.log'}")
        time.sleep(0.1)
    return proc, HardwareInfo(**json.loads(ready.read_text()))


def stop_hardware(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# --- the clients ---------------------------------------------------------------------------------


class RedfishFloor:
    """A bare Redfish client: one requests.Session, reset, then GET until the state reads back."""

    def __init__(self, base_url: str, system_path: str, ca_file: str) -> None:
        import requests

        self.url = base_url + system_path
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)
        # Per request: requests lets $REQUESTS_CA_BUNDLE override a session-wide ``verify``.
        self.ca_file = ca_file
        self.session.get(self.url, timeout=10, verify=ca_file).raise_for_status()  # open the connection

    def set(self, on: bool) -> None:
        reset = self.session.post(
            self.url + "/Actions/ComputerSystem.Reset",
            json={"ResetType": "On" if on else "ForceOff"},
            timeout=10,
            verify=self.ca_file,
        )
        reset.raise_for_status()
        target = "On" if on else "Off"
        while self.session.get(self.url, timeout=10, verify=self.ca_file).json().get("PowerState") != target:
            pass


class IpmiFloor:
    """A bare pyghmi Command: Chassis Control, then Get Chassis Status until the state reads back.

    The session is opened with our driver's SHA-1 option (a pyghmi client cannot otherwise log in to
    a pyghmi-based BMC); the timed calls are plain ``Command.raw_command``.
    """

    def __init__(self, address: str) -> None:
        from remediator.fencing.address import parse_bmc_address
        from remediator.fencing.base import Credentials
        from remediator.fencing.ipmi import IpmiDriver

        self._opener = IpmiDriver(parse_bmc_address(address), Credentials(USER, PASSWORD), legacy_sha1=True)
        self.cmd: Any = self._opener._cmd()

    def set(self, on: bool) -> None:
        rsp = self.cmd.raw_command(netfn=0x00, command=0x02, data=(0x01 if on else 0x00,))
        if rsp.get("code"):
            raise RuntimeError(f"chassis control failed: {rsp}")
        while True:
            data = self.cmd.raw_command(netfn=0x00, command=0x01).get("data") or [0]
            if bool(data[0] & 0x01) == on:
                return

    def close(self) -> None:
        self._opener.close()


class OurDriver:
    """Our driver through the verified operations (the path the controller and `bmc off|on` take)."""

    def __init__(self, driver: Any, *, read_first: bool = True) -> None:
        self.driver = driver
        self.read_first = read_first
        driver.power_state()  # connect before timing

    def set(self, on: bool) -> None:
        from remediator.fencing.base import PowerState
        from remediator.fencing.verify import power_off_verified, power_on_verified

        operation = power_on_verified if on else power_off_verified
        result = operation(self.driver, OP_TIMEOUT, read_first=self.read_first)
        if result.state is not (PowerState.ON if on else PowerState.OFF) or not result.command_sent:
            raise RuntimeError(f"unexpected result {result}")


class FenceAgent:
    """A fence-agents script, one process per action, options on stdin (no password in argv)."""

    def __init__(self, path: str, options: dict[str, str], env: dict[str, str] | None = None) -> None:
        self.path = path
        self.options = options
        self.env = {**os.environ, **(env or {})}

    def set(self, on: bool) -> None:
        stdin = "".join(f"{k}={v}\n" for k, v in {**self.options, "action": "on" if on else "off"}.items())
        done = subprocess.run(
            [self.path],
            input=stdin.encode(),
            capture_output=True,
            timeout=OP_TIMEOUT,
            env=self.env,
            check=False,
        )
        if done.returncode != 0:
            text = done.stderr.decode(errors="replace").replace(PASSWORD, "<password>")
            raise RuntimeError(f"{Path(self.path).name} failed ({done.returncode}): {text.strip()[:300]}")


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Method:
    protocol: str
    label: str
    set_power: Callable[[bool], None]
    off: list[float] = field(default_factory=list)
    on: list[float] = field(default_factory=list)


def timed(method: Method, on: bool, is_on: Callable[[], bool]) -> float:
    start = time.perf_counter()
    method.set_power(on)
    elapsed = time.perf_counter() - start
    if is_on() != on:  # checked outside the timing, straight from libvirt
        raise RuntimeError(f"{method.label}: reported {'on' if on else 'off'} but the domain disagrees")
    return elapsed


def p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def print_table(methods: list[Method]) -> None:
    floors = {m.protocol: m for m in methods if m.label.endswith("floor")}
    header = (
        f"{'method':<40} {'off+verified median':>19} {'p90':>7} {'x floor':>8}   "
        f"{'on+verified median':>18} {'p90':>7} {'x floor':>8}"
    )
    print(header)
    print("-" * len(header))
    for m in methods:
        floor = floors[m.protocol]
        off_med, on_med = statistics.median(m.off), statistics.median(m.on)
        off_ratio = off_med / statistics.median(floor.off)
        on_ratio = on_med / statistics.median(floor.on)
        print(
            f"{m.label:<40} {off_med:>18.3f}s {p90(m.off):>6.3f}s {off_ratio:>7.2f}x   "
            f"{on_med:>17.3f}s {p90(m.on):>6.3f}s {on_ratio:>7.2f}x"
        )


def print_targets(methods: list[Method]) -> None:
    by_label = {m.label: m for m in methods}

    def med(label: str) -> float:
        return float(statistics.median(by_label[label].off))

    ours_rf, ours_ipmi = med("redfish: remediator RedfishDriver"), med("ipmi: remediator IpmiDriver")
    rows = [
        ("redfish off+verified vs floor", ours_rf / med("redfish: floor"), "<= 1.10x", 1.10),
        ("redfish off+verified vs fence_redfish", ours_rf / med("redfish: fence_redfish"), "< 1.00x", 0.999),
        ("ipmi off+verified vs fence_ipmilan", ours_ipmi / med("ipmi: fence_ipmilan"), "<= 0.50x", 0.50),
    ]
    print()
    print("targets (issue 3):")
    for what, ratio, target, limit in rows:
        verdict = "met" if ratio <= limit else "NOT met"
        print(f"  {what:<40} {ratio:5.2f}x  (target {target:>8})  {verdict}")


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def print_conditions(rounds: int, hw: HardwareInfo, load: tuple[float, float]) -> None:
    subreaper = hw.subreaper and hw.qemu_parent_pid == hw.helper_pid
    accel = "KVM" if hw.virt_type == "kvm" else "TCG (no usable /dev/kvm)"
    agents = _version(["dpkg-query", "-W", "-f", "${Version}", "fence-agents"])
    print()
    print("conditions:")
    print(f"  rounds: {rounds} measured (+1 warm-up); per round and method: off+verified, then on+verified;")
    print("          method order rotated every round; all methods against the same BMCs and host domain")
    print(f"  host domain: 64 MiB diskless qemu guest, {accel}, in a private libvirtd")
    print(
        f"  subreaper: {'on' if subreaper else 'OFF'} (libvirtd under a reaping supervisor; "
        f"qemu's parent is that supervisor: {hw.qemu_parent_pid == hw.helper_pid})"
    )
    print("  redfish: sushy-emulator (libvirt driver), HTTPS with a CA the clients verify, basic auth")
    print("  ipmi: pyghmi-based lab BMC (libvirt), lanplus cipher suite 3 (SHA-1)")
    print("  ours: connected before timing; power_*_verified reads the state once before the command")
    print("        (the 'no read-first' row skips that read: read_first=False, for comparison only)")
    print("  fence agents: defaults, one process per action (fence_ipmilan: power_wait 2 s)")
    print(
        f"  versions: fence-agents {agents}, libvirt {_version(['libvirtd', '--version'])}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print(f"  machine load (1-min load average): {load[0]:.2f} at the start, {load[1]:.2f} at the end")


@dataclass
class Bench:
    """The BMCs of the host domain and the clients measured against them."""

    root: Path
    hw: HardwareInfo
    methods: list[Method] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)

    def setup(self) -> None:
        from remediator.fencing.address import parse_bmc_address
        from remediator.fencing.base import Credentials
        from remediator.fencing.ipmi import IpmiDriver
        from remediator.fencing.redfish import RedfishDriver
        from remediator.lab.bmc import IpmiBmc, SushyEmulator
        from remediator.lab.pki import CertificateAuthority

        root, hw = self.root, self.hw
        ca = CertificateAuthority.create("fence-bench-ca")
        ca.write(root / "ca.crt", root / "ca.key")
        ca_file = str(root / "ca.crt")
        sushy = SushyEmulator(root / "sushy", username=USER, password=PASSWORD, ca=ca, libvirt_uri=hw.uri)
        self.closers.append(sushy.stop)
        sushy.start()
        ipmi = IpmiBmc(root / "ipmi", username=USER, password=PASSWORD, libvirt_uri=hw.uri, domain=DOMAIN)
        self.closers.append(ipmi.stop)
        ipmi.start()

        system_path = f"/redfish/v1/Systems/{hw.uuid}"
        creds = Credentials(USER, PASSWORD)
        redfish_driver = RedfishDriver(
            parse_bmc_address(sushy.address(system_path)), creds, ca_file=ca_file, timeout=10
        )
        ipmi_driver = IpmiDriver(parse_bmc_address(ipmi.address), creds, legacy_sha1=True, timeout=10)
        ipmi_floor = IpmiFloor(ipmi.address)
        self.closers += [redfish_driver.close, ipmi_driver.close, ipmi_floor.close]
        redfish_agent = FenceAgent(
            FENCE_REDFISH,
            {"ip": "127.0.0.1", "ipport": str(sushy.port), "username": USER, "password": PASSWORD,
             "ssl": "1", "systems_uri": system_path},
            env={"REQUESTS_CA_BUNDLE": ca_file},
        )  # fmt: skip
        ipmi_agent = FenceAgent(
            FENCE_IPMILAN,
            {"ip": "127.0.0.1", "ipport": str(ipmi.port), "username": USER, "password": PASSWORD,
             "lanplus": "1", "cipher": "3"},
        )  # fmt: skip
        self.methods = [
            Method("redfish", "redfish: floor", RedfishFloor(sushy.url, system_path, ca_file).set),
            Method("redfish", "redfish: remediator RedfishDriver", OurDriver(redfish_driver).set),
            Method(
                "redfish",
                "redfish: RedfishDriver, no read-first",
                OurDriver(redfish_driver, read_first=False).set,
            ),
            Method("redfish", "redfish: fence_redfish", redfish_agent.set),
            Method("ipmi", "ipmi: floor", ipmi_floor.set),
            Method("ipmi", "ipmi: remediator IpmiDriver", OurDriver(ipmi_driver).set),
            Method("ipmi", "ipmi: fence_ipmilan", ipmi_agent.set),
        ]

    def measure(self, rounds: int) -> None:
        import libvirt

        conn = libvirt.open(self.hw.uri)
        domain = conn.lookupByName(DOMAIN)

        def is_on() -> bool:
            return bool(domain.isActive())

        try:
            for round_no in range(rounds + 1):
                shift = round_no % len(self.methods)  # rotate: no method always follows the same one
                for m in self.methods[shift:] + self.methods[:shift]:
                    off = timed(m, False, is_on)
                    on = timed(m, True, is_on)
                    if round_no > 0:
                        m.off.append(off)
                        m.on.append(on)
        finally:
            conn.close()

    def close(self) -> None:
        for close in reversed(self.closers):
            close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (plus one warm-up round)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    parser.add_argument("--hardware-helper", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hardware_helper is not None:
        return hardware_helper(args.hardware_helper)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for tool in (FENCE_REDFISH, FENCE_IPMILAN, "libvirtd", "unshare"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")

    # Short path: libvirtd's socket path must fit AF_UNIX's 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="fence-bench-", dir="/tmp"))
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    print(f"starting a private libvirtd, the host domain and its BMCs in {root} ...", flush=True)
    helper, hw = start_hardware(root)
    bench = Bench(root, hw)
    try:
        bench.setup()
        print(
            f"ready after {time.monotonic() - started:.1f}s; measuring 1 warm-up + {args.rounds} rounds ..."
        )
        bench.measure(args.rounds)
    finally:
        bench.close()
        stop_hardware(helper)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print_conditions(args.rounds, hw, (load_before, os.getloadavg()[0]))
    print()
    print_table(bench.methods)
    print_targets(bench.methods)
    print(f"\ntotal run time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
