"""The lab daemon: one background process that owns everything a lab runs.

``remediator lab up`` starts it detached (``python -m remediator.lab.daemon``). It makes itself a
child subreaper, starts the control plane and the hosts step by step (recording each step in
``lab.json``), then serves commands (status, fail, heal, down) on a Unix socket in the state dir. All
commands run one at a time on the main thread, which is also the only thread that starts processes.
Any failure while starting tears down whatever was started, records the error, and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from remediator import kube
from remediator.errors import ConfigError, LabError, RemediatorError
from remediator.lab import binaries as binaries_mod
from remediator.lab import state
from remediator.lab.bmcs import LabBmcs
from remediator.lab.controller import install_lab_health_check, wait_for_leader
from remediator.lab.controlplane import ControlPlane, free_ports
from remediator.lab.hardware import Hardware
from remediator.lab.hosts import FAILURE_MODES, HostFleet, HostService, LabHost
from remediator.lab.procs import ManagedProcess, Supervisor, become_subreaper
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers
from remediator.lab.vmhosts import VmHostService
from remediator.nodefencing import CONTROLLER_NAMESPACE_DEFAULT

log = logging.getLogger("remediator.lab.daemon")

Reply = dict[str, Any]

#: Internal command: a host domain's power changed (from libvirt's event thread).
POWER_EVENT = "_power-event"


@dataclass
class _Request:
    body: dict[str, Any]
    reply: queue.Queue[Reply]


class _Handler(socketserver.StreamRequestHandler):
    server: _ControlServer

    def handle(self) -> None:
        line = self.rfile.readline(1 << 20)
        try:
            body = json.loads(line)
            if not isinstance(body, dict):
                raise TypeError("request must be a JSON object")
        except (ValueError, TypeError) as exc:
            self._send({"ok": False, "error": f"bad request: {exc}"})
            return
        request = _Request(body, queue.Queue(maxsize=1))
        self.server.commands.put(request)
        try:
            reply = request.reply.get(timeout=600)
        except queue.Empty:
            reply = {"ok": False, "error": "the lab daemon did not answer in time"}
        self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.wfile.write(json.dumps(reply).encode() + b"\n")


class _ControlServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, commands: queue.Queue[_Request]) -> None:
        self.commands = commands
        super().__init__(path, _Handler)


class LabDaemon:
    """Starts the lab, then serves commands until told to stop."""

    def __init__(
        self,
        paths: LabPaths,
        host_count: int,
        timers: LabTimers,
        *,
        controller: bool = True,
        health_check: bool = True,
    ) -> None:
        self.paths = paths
        self.host_count = host_count
        self.run_controller = controller
        self.install_health_check = health_check
        self.controller_proc: ManagedProcess | None = None
        self.controller_held = False
        self.timers = timers
        self.supervisor = Supervisor()
        self.commands: queue.Queue[_Request] = queue.Queue()
        self.status: dict[str, Any] = {
            "status": state.STATUS_STARTING,
            "pid": os.getpid(),
            "stateDir": str(paths.root),
            "hostCount": host_count,
            "controller": controller,
            "healthCheck": health_check,
            "timers": timers.as_dict(),
            "steps": [],
            "startedAt": time.time(),
        }
        self.control_plane: ControlPlane | None = None
        self.fleet: HostFleet | None = None
        self.hardware: Hardware | None = None
        self.bmcs: LabBmcs | None = None
        self._stopping = False

    # --- status ---------------------------------------------------------------------------------

    def _update(self, **fields: Any) -> None:
        self.status.update(fields)
        self.paths.write_status(self.status)

    def _step(self, name: str, action: Callable[[], object]) -> None:
        self._update(step=name)
        log.info("step: %s", name)
        started = time.monotonic()
        action()
        self.status["steps"].append({"step": name, "seconds": round(time.monotonic() - started, 3)})
        self.paths.write_status(self.status)

    # --- start-up -------------------------------------------------------------------------------

    def start(self) -> None:
        found: dict[str, Any] = {}
        self._step("find binaries", lambda: found.update(self._find_binaries()))
        cp = ControlPlane(self.paths, self.supervisor, found, self.timers)
        self.control_plane = cp

        def certificates() -> None:
            cp.allocate_ports()
            cp.generate_pki()
            cp.write_kubeconfigs()

        self._step("certificates", certificates)
        self._update(ports=cp.ports, server=cp.server, kubeconfig=str(self.paths.kubeconfig))
        hardware = Hardware(self.paths.root / "hardware", self.supervisor, self._on_power_event)
        self.hardware = hardware
        # libvirtd probes qemu while the control plane starts.
        self._step("spawn hardware libvirtd", hardware.spawn)
        self._step("start etcd", cp.start_etcd)
        self._step("start kube-apiserver", cp.start_apiserver)
        api = kube.api_client(self.paths.kubeconfig)
        self._step("start kube-controller-manager", cp.start_controller_manager)
        self._step("start kube-scheduler", cp.start_scheduler)
        self._step("apply CRDs", lambda: kube.apply_crds(api))
        self._start_hosts(api, cp, hardware)
        if self.run_controller:
            self._step("start controller", lambda: self._start_controller(api))
        if self.install_health_check:
            self._step("install NodeHealthCheck", lambda: install_lab_health_check(api))
        self._update(status=state.STATUS_READY, step="ready", readyAt=time.time(), hosts=self._hosts_json())

    def _start_hosts(self, api: client.ApiClient, cp: ControlPlane, hardware: Hardware) -> None:
        """Power the host domains on, start their BMCs, register the nodes and boot the hosts."""
        core = client.CoreV1Api(api)
        fleet = HostFleet(self.paths, self.supervisor, cp, core, self.timers)
        self.fleet = fleet
        fleet.services.extend(self._host_services(hardware))
        hosts = [LabHost.new(i, state.host_name(i)) for i in range(1, self.host_count + 1)]

        def power_on_hosts() -> None:
            hardware.connect()
            for host in hosts:
                hardware.add_host(host.name, host.system_uuid)
                host.powered = True

        self._step("power on host domains", power_on_hosts)
        assert cp.ca is not None
        bmcs = LabBmcs(self.paths.root / "bmc", self.supervisor, cp.ca, hardware.uri)
        self.bmcs = bmcs

        def start_bmcs() -> None:
            bmcs.start_redfish()
            for host in hosts:
                bmcs.start_ipmi(host.name, host.system_uuid)
                host.bmc = bmcs.endpoints(host.name, host.system_uuid)
            bmcs.install(api, {h.name: h.system_uuid for h in hosts})

        self._step("start BMCs", start_bmcs)

        def register() -> None:
            fleet.install_rbac(client.RbacAuthorizationV1Api(api))
            for host in hosts:
                fleet.add(host)
                fleet.boot(host)

        self._step("register hosts", register)

        def ready() -> None:
            for host in hosts:
                fleet.wait_ready(host)

        self._step("hosts Ready", ready)

    def _restart_crashed_controller(self) -> None:
        """Like a Deployment: a controller that exited on its own (not by `lab controller kill`) --
        e.g. a leader that could not renew its Lease during a control-plane outage -- is started
        again."""
        proc = self.controller_proc
        if proc is None or proc.alive() or not self.run_controller or self.controller_held:
            return
        log.warning("%s; starting it again", proc.exit_summary())
        try:
            self._start_controller(kube.api_client(self.paths.kubeconfig))
        except RemediatorError as exc:
            log.error("could not restart the controller: %s", exc)

    def _control_plane_outage(self, seconds: float) -> Reply:
        """Stop kube-apiserver for ``seconds`` and start it again (a control-plane restart/outage)."""
        if not 0 < seconds <= 300:
            raise ConfigError("an outage lasts more than 0 and at most 300 seconds")
        assert self.control_plane is not None
        proc = self.control_plane.processes["kube-apiserver"]
        started = time.time()
        self.supervisor.stop(proc)
        log.info("control-plane outage: kube-apiserver stopped for %.0fs", seconds)
        time.sleep(seconds)  # the outage itself: how long the fault lasts
        self.control_plane.start_apiserver()
        return {
            "ok": True,
            "message": f"kube-apiserver was down for {time.time() - started:.1f}s",
            "at": started,
        }

    def _controller_command(self, action: str) -> Reply:
        """``kill``: SIGKILL the remediation controller (a crash); ``start``: start it again."""
        if not self.run_controller:
            raise ConfigError("this lab runs no controller (started with --no-controller)")
        if action == "kill":
            self.controller_held = True  # stays down until `start`
            if self.controller_proc is not None:
                self.supervisor.kill(self.controller_proc)
            return {"ok": True, "message": "controller killed", "at": time.time()}
        if action == "start":
            self.controller_held = False
            if self.controller_proc is not None and self.controller_proc.alive():
                return {"ok": True, "message": "controller already running", "at": time.time()}
            self._start_controller(kube.api_client(self.paths.kubeconfig))
            return {"ok": True, "message": "controller started", "at": time.time()}
        raise ConfigError(f"unknown controller action {action!r} (kill, start)")

    def _start_controller(self, api: client.ApiClient) -> None:
        """The remediation controller, as `remediator run` with the lab's kubeconfig."""
        self.controller_proc = self.supervisor.spawn(
            "remediator-controller",
            [
                sys.executable,
                "-m",
                "remediator.cli",
                "run",
                f"--kubeconfig={self.paths.kubeconfig}",
                f"--namespace={CONTROLLER_NAMESPACE_DEFAULT}",
                "--identity=lab-controller",
                f"--metrics-port={self.status['ports'].setdefault('metrics', free_ports(1)[0])}",
            ],
            self.paths.log("remediator-controller"),
        )
        self._update(ports=self.status["ports"])
        wait_for_leader(api, CONTROLLER_NAMESPACE_DEFAULT, "lab-controller", self.controller_proc)

    def _host_services(self, hardware: Hardware) -> list[HostService]:
        """What every host runs besides its kubelet (booted and halted with the host's power)."""
        return [VmHostService(self.supervisor, self.paths, hardware)]

    def _find_binaries(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for tool in binaries_mod.ALL_TOOLS:
            for name in tool.packages:
                path = binaries_mod.find_binary(name)
                if path is None:
                    raise LabError(
                        "find binaries",
                        f"{name} {tool.version()} is not built; run `python -m remediator.lab.binaries`",
                    )
                found[name] = path
        return found

    def _hosts_json(self) -> list[dict[str, Any]]:
        return [self.fleet.describe(h) for h in self.fleet.hosts.values()] if self.fleet else []

    # --- commands -------------------------------------------------------------------------------

    def handle(self, body: dict[str, Any]) -> Reply:
        handlers: dict[str, Callable[[], Reply]] = {
            "status": lambda: {"ok": True, "lab": self.status, "processes": self._processes()},
            "fail": lambda: self._fail(str(body.get("host")), str(body.get("mode"))),
            "heal": lambda: self._heal(str(body.get("host"))),
            "controller": lambda: self._controller_command(str(body.get("action"))),
            "control-plane-outage": lambda: self._control_plane_outage(float(body.get("seconds", 0))),
            POWER_EVENT: lambda: self._power_event(body),
            "down": self._request_down,
        }
        handler = handlers.get(str(body.get("command")))
        if handler is None:
            return {"ok": False, "error": f"unknown command {body.get('command')!r}"}
        return handler()

    def _power_event(self, body: dict[str, Any]) -> Reply:
        self._power_changed(str(body.get("host")), bool(body.get("on")))
        return {"ok": True}

    def _request_down(self) -> Reply:
        self._stopping = True
        return {"ok": True}

    def _processes(self) -> list[dict[str, Any]]:
        return [
            {"name": p.name, "pid": p.pid, "log": str(p.log_path)}
            for p in sorted(self.supervisor.running(), key=lambda p: p.started_at)
        ]

    def _host(self, name: str) -> LabHost:
        assert self.fleet is not None
        host = self.fleet.hosts.get(name)
        if host is None:
            known = ", ".join(self.fleet.hosts) or "none"
            raise ConfigError(f"unknown host {name!r} (hosts: {known})")
        return host

    def _fail(self, name: str, mode: str) -> Reply:
        host = self._host(name)
        if mode not in FAILURE_MODES:
            raise ConfigError(f"unknown failure mode {mode!r} (modes: {', '.join(FAILURE_MODES)})")
        if host.failure:
            return {"ok": True, "message": f"{name} has already failed ({host.failure})", "changed": False}
        if not host.powered:
            return {"ok": True, "message": f"{name} is powered off already", "changed": False}
        assert self.fleet is not None and self.hardware is not None and self.bmcs is not None
        at = time.time()
        if mode == "kubelet-hang":
            self.fleet.stop_kwok(host)
            message = f"{name}: kubelet hang (the host stays powered; its node stops heartbeating)"
        elif mode == "partition":
            # Cut off from the control plane: its kubelet and agents fall silent (frozen, not dead),
            # while everything else on the host -- libvirt, its VMs -- keeps running.
            self.fleet.stop_kwok(host)
            for agent in self.fleet.agents(host):
                self.supervisor.pause(agent)
            message = f"{name}: partitioned from the control plane (VMs keep running)"
        elif mode == "bmc-down":
            # The host's kubelet hangs and its first fence level (Redfish) does not answer.
            self.bmcs.stop_redfish()
            self.fleet.stop_kwok(host)
            message = f"{name}: kubelet hang and its Redfish BMC is unreachable"
        else:  # power-loss: cut the host domain's power behind everybody's back
            self.hardware.power(name, False)
            self._power_changed(name, False)
            message = f"{name}: power lost"
        host.failure = mode
        host.extra["failedAt"] = at
        self._update(hosts=self._hosts_json())
        return {"ok": True, "message": message, "changed": True, "at": at}

    def _heal(self, name: str) -> Reply:
        host = self._host(name)
        assert self.fleet is not None and self.hardware is not None and self.bmcs is not None
        at = time.time()
        if self.bmcs.redfish_stopped:
            self.bmcs.start_redfish()
        for agent in self.fleet.agents(host):
            self.supervisor.resume(agent)
        if not host.powered:
            self.hardware.power(name, True)
            self._power_changed(name, True)
            message = f"{name}: power restored, the host boots"
        elif host.kwok is None or not host.kwok.alive():
            self.fleet.start_kwok(host)
            message = f"{name}: healed (kubelet running again)"
        elif host.failure is not None:
            message = f"{name}: healed"
        else:
            return {"ok": True, "message": f"{name} is healthy", "changed": False}
        host.failure = None
        self._update(hosts=self._hosts_json())
        return {"ok": True, "message": message, "changed": True, "at": at}

    def _on_power_event(self, host: str, on: bool) -> None:
        """From libvirt's event thread: hand the change to the main loop, which owns processes."""
        self.commands.put(_Request({"command": POWER_EVENT, "host": host, "on": on}, queue.Queue(maxsize=1)))

    def _power_changed(self, name: str, on: bool) -> None:
        """A host's power changed (through its BMC, or `lab fail/heal`): it stops, or it boots."""
        assert self.fleet is not None
        host = self.fleet.hosts.get(name)
        if host is None or host.powered == on:
            return  # not a lab host, or the event of a change already handled
        host.powered = on
        if on:
            host.failure = None  # a fresh boot: whatever hung before is gone
            self.fleet.boot(host)
            host.extra["poweredOnAt"] = time.time()
        else:
            self.fleet.halt(host)
            host.extra["poweredOffAt"] = time.time()
        log.info("%s powered %s", name, "on" if on else "off")
        self._update(hosts=self._hosts_json())

    # --- main loop ------------------------------------------------------------------------------

    def serve(self) -> None:
        if self.paths.socket.exists():
            self.paths.socket.unlink()
        server = _ControlServer(str(self.paths.socket), self.commands)
        os.chmod(self.paths.socket, 0o600)
        thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        thread.start()
        try:
            while not self._stopping:
                try:
                    request = self.commands.get(timeout=1.0)
                except queue.Empty:
                    self._restart_crashed_controller()
                    if self.fleet is not None:
                        self.fleet.supervise()
                    continue
                try:
                    reply = self.handle(request.body)
                except RemediatorError as exc:
                    reply = {"ok": False, "error": str(exc)}
                request.reply.put(reply)
        finally:
            server.shutdown()
            server.server_close()

    def teardown(self, final_status: str, error: str | None = None) -> None:
        self._update(status=state.STATUS_STOPPING, step="stopping")
        if self.fleet is not None:
            self.fleet.stop_services()
        if self.hardware is not None:
            self.hardware.stop()
        self.supervisor.stop_all()
        self.supervisor.kill_orphans()
        if self.paths.socket.exists():
            self.paths.socket.unlink()
        self._update(status=final_status, step=final_status, error=error, stoppedAt=time.time(), hosts=[])

    def request_stop(self) -> None:
        self._stopping = True
        # Wake the main loop if it is waiting for a command.
        self.commands.put(_Request({"command": "down"}, queue.Queue(maxsize=1)))


def run(paths: LabPaths, host_count: int, timers: LabTimers, *, controller: bool, health_check: bool) -> int:
    subreaper = become_subreaper()
    daemon = LabDaemon(paths, host_count, timers, controller=controller, health_check=health_check)
    daemon.status["subreaper"] = subreaper
    signal.signal(signal.SIGTERM, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        daemon.start()
    except RemediatorError as exc:
        log.error("lab start failed: %s", exc)
        daemon.teardown(state.STATUS_FAILED, str(exc))
        return 1
    except Exception as exc:
        log.exception("lab start failed")
        daemon.teardown(
            state.STATUS_FAILED, f"{daemon.status.get('step')}: {exc!r} (log: {paths.daemon_log})"
        )
        return 1
    try:
        daemon.serve()
    finally:
        daemon.teardown(state.STATUS_STOPPED)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remediator.lab.daemon")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--hosts", type=int, required=True)
    parser.add_argument("--timers", required=True, help="JSON object of LabTimers fields")
    parser.add_argument("--no-controller", action="store_true")
    parser.add_argument("--no-health-check", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    timers = LabTimers(**json.loads(args.timers))
    return run(
        LabPaths(Path(args.state_dir)),
        args.hosts,
        timers,
        controller=not args.no_controller,
        health_check=not args.no_health_check and not args.no_controller,
    )


if __name__ == "__main__":
    sys.exit(main())
