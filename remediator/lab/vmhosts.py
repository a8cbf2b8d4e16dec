"""The lab's VM hosts: per lab host a private libvirtd and a vmcore handler; plus the vmcore controller.

A :class:`VmHostService` is one of the lab's host services (``remediator.lab.hosts.HostService``):

* ``boot`` (a host powers on, or the lab starts): spawn the host's libvirtd (its own mount namespace
  and ``host_uuid``, state under ``STATE_DIR/vmhosts/HOST``, kept across power cycles so that a host
  comes back holding its old domain definitions, but not its guests' runtime status) and its handler
  (``python -m vmcore.handler --node HOST --libvirt-uri URI --kubeconfig ...``). The first boot also
  starts the vmcore controller (``python -m vmcore.controller``), which lives as long as the lab.
* ``halt`` (power lost): SIGKILL the handler, every qemu of the host (read from libvirt's pid files)
  and the libvirtd -- nothing gets to shut down cleanly, as in a power cut.
* ``describe``: the host's libvirt URI and its domains as that libvirt reports them.

Everything is spawned through the lab daemon's Supervisor, from its main thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

from remediator.lab.hardware import Hardware
from remediator.lab.hosts import LabHost
from remediator.lab.libvirtd import LabLibvirtd
from remediator.lab.procs import ManagedProcess, Supervisor
from remediator.lab.state import LabPaths

log = logging.getLogger(__name__)

#: Each host's libvirtd takes the incoming migrations on ports of its own (the n-th host
#: BASE + n*PER_HOST ...), so two migrations to two hosts never race for one port.
MIGRATION_PORT_BASE = 49152
MIGRATION_PORTS_PER_HOST = 16


class _VmLibvirtd(LabLibvirtd):
    """A host's libvirtd. Its qemu processes stay out of cgroups: every daemon names a guest's cgroup
    ``machine/qemu-ID-NAME`` with IDs counting from 1, so the same VM on two hosts (a migration)
    would share one cgroup."""

    def _prepare(self) -> None:
        super()._prepare()
        conf = self.root / "etc" / "qemu.conf"
        conf.write_text(conf.read_text() + "cgroup_controllers = [ ]\n")


class VmHostService:
    """Per-host libvirtd + vmcore handler, and the lab's vmcore controller."""

    name = "vmcore"

    def __init__(self, supervisor: Supervisor, paths: LabPaths, hardware: Hardware | None = None) -> None:
        self.supervisor = supervisor
        self.paths = paths
        self.root = paths.root / "vmhosts"
        self.daemons: dict[str, LabLibvirtd] = {}
        self.handlers: dict[str, ManagedProcess] = {}
        self.controller: ManagedProcess | None = None
        self._conns: dict[str, Any] = {}

    def libvirtd(self, host: str) -> LabLibvirtd:
        daemon = self.daemons.get(host)
        if daemon is None:
            # The same host UUID across power cycles: it is the same machine. Incoming migrations
            # listen on 127.0.0.1, on ports of the host's own range (see remediator.lab.libvirtd).
            first = MIGRATION_PORT_BASE + MIGRATION_PORTS_PER_HOST * len(self.daemons)
            daemon = _VmLibvirtd(
                host,
                self.root / host,
                self.supervisor,
                str(uuid.uuid5(uuid.NAMESPACE_DNS, host)),
                migration_ports=(first, first + MIGRATION_PORTS_PER_HOST - 1),
            )
            self.daemons[host] = daemon
        return daemon

    def uri(self, host: str) -> str:
        return self.libvirtd(host).uri

    def boot(self, host: LabHost) -> None:
        daemon = self.libvirtd(host.name)
        # A power cut leaves no running guest behind. Left in place, libvirt's per-guest status files
        # would make the new libvirtd list the killed guests as running until its reconnect to their
        # (dead) qemu monitors fails; a stale socket would let the handler connect too early. The
        # rest of libvirt's runtime directory stays as it is.
        for stale in (daemon.root / "run" / "qemu").glob("*.xml"):
            stale.unlink(missing_ok=True)
        for stale in (daemon.root / "run" / "qemu").glob("*.pid"):
            stale.unlink(missing_ok=True)
        daemon.socket_path.unlink(missing_ok=True)
        daemon.spawn()
        self._start_handler(host)
        self._start_controller()

    def _start_handler(self, host: LabHost) -> None:
        daemon = self.libvirtd(host.name)
        self.handlers[host.name] = self.supervisor.spawn(
            f"vmcore-handler-{host.name}",
            [
                sys.executable,
                "-m",
                "vmcore.handler",
                f"--node={host.name}",
                f"--libvirt-uri={daemon.uri}",
                f"--kubeconfig={self.paths.kubeconfig}",
                f"--state-dir={self.root / host.name / 'vmcore'}",
            ],
            self.paths.log(f"vmcore-handler-{host.name}"),
        )

    def _start_controller(self) -> None:
        if self.controller is None or not self.controller.alive():
            self.controller = self.supervisor.spawn(
                "vmcore-controller",
                [sys.executable, "-m", "vmcore.controller", f"--kubeconfig={self.paths.kubeconfig}"],
                self.paths.log("vmcore-controller"),
            )

    def supervise(self, host: LabHost) -> None:
        """Like a DaemonSet and a Deployment: start a crashed handler or controller again (a
        powered host only; the lab calls this about once a second)."""
        handler = self.handlers.get(host.name)
        if host.powered and handler is not None and not handler.alive():
            log.warning("%s; starting it again", handler.exit_summary())
            self._start_handler(host)
        if self.controller is not None and not self.controller.alive():
            log.warning("%s; starting it again", self.controller.exit_summary())
            self._start_controller()

    def halt(self, host: LabHost) -> None:
        self._drop_connection(host.name)
        handler = self.handlers.pop(host.name, None)
        if handler is not None:
            self.supervisor.kill(handler)
        daemon = self.daemons.get(host.name)
        if daemon is None:
            return
        for pid in self._qemu_pids(daemon):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if daemon.proc is not None:
            self.supervisor.kill(daemon.proc)

    @staticmethod
    def _qemu_pids(daemon: LabLibvirtd) -> list[int]:
        pids = []
        for pid_file in (daemon.root / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if b"qemu" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
        return pids

    def _connection(self, host: str) -> Any:
        import libvirt

        conn = self._conns.get(host)
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                if conn.isAlive():
                    return conn
            self._conns.pop(host, None)
        daemon = self.daemons.get(host)
        if (
            daemon is None
            or daemon.proc is None
            or not daemon.proc.alive()
            or not daemon.socket_path.exists()
        ):
            return None
        try:
            conn = libvirt.open(daemon.uri)
        except libvirt.libvirtError:
            return None
        self._conns[host] = conn
        return conn

    def _drop_connection(self, host: str) -> None:
        conn = self._conns.pop(host, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def domains(self, host: str) -> list[dict[str, str]] | None:
        """The host's domains as its libvirt reports them; None while it is off or starting."""
        import libvirt

        from vmcore.virt import STATE_NAMES

        conn = self._connection(host)
        if conn is None:
            return None
        try:
            return [
                {"name": d.name(), "uuid": d.UUIDString(), "state": STATE_NAMES.get(d.state()[0], "nostate")}
                for d in conn.listAllDomains(0)
            ]
        except libvirt.libvirtError:
            self._drop_connection(host)
            return None

    def agents(self, host: LabHost) -> list[ManagedProcess]:
        """The host's processes that talk to the control plane: its vmcore handler."""
        handler = self.handlers.get(host.name)
        return [handler] if handler is not None and handler.alive() else []

    def describe(self, host: LabHost) -> dict[str, Any]:
        handler = self.handlers.get(host.name)
        return {
            "libvirtUri": self.uri(host.name),
            "handlerPid": handler.pid if handler is not None and handler.alive() else None,
            "controllerPid": self.controller.pid if self.controller and self.controller.alive() else None,
            "domains": self.domains(host.name) if host.powered else None,
        }

    def stop(self) -> None:
        for host in list(self._conns):
            self._drop_connection(host)
        procs = [*self.handlers.values()]
        if self.controller is not None:
            procs.append(self.controller)
        for proc in procs:
            self.supervisor.stop(proc, timeout=5.0)
        for daemon in self.daemons.values():
            for pid in self._qemu_pids(daemon):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            daemon.stop()
