"""Private libvirt daemons for the lab, several side by side on one machine.

Debian's libvirt 9 ships only the monolithic ``libvirtd``. Each lab daemon runs in a mount namespace
of its own (``unshare -m``) with ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt`` and ``/var/log/libvirt`` bind-mounted from a directory of the lab, and a
``host_uuid`` of its own (libvirt refuses to migrate to "the same host"). Clients reach it through
its socket: ``qemu:///system?socket=DIR/run/libvirt-sock``.

Live migration between lab daemons: qemu's incoming migration listens on 127.0.0.1 (the migration's
``VIR_MIGRATE_PARAM_LISTEN_ADDRESS``; qemu.conf's ``migration_address`` refuses a loopback address)
on a port the *target* daemon picks from its ``migration_port_min..max``. Every daemon
picks independently, so daemons side by side need ranges of their own: with libvirt's shared default
(49152-49215) two migrations that start at once to two hosts both take 49152 and the second fails
with "Failed to find an available port: Address already in use".

It must run under the lab daemon's supervisor: the supervisor is a child subreaper, so qemu
processes (which libvirtd double-forks) become its children and are reaped at once -- without that,
this sandbox's PID 1 reaps late and ``virDomainDestroy`` waits 1-2 s for a zombie.

The first connection to a new daemon probes qemu's capabilities (~8 s). The probe's result is kept
in a cache under ``$XDG_CACHE_HOME/remediator/libvirt-qemu-capabilities`` and copied into every new
daemon, which libvirt revalidates against the qemu binary and its own version before using it.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from remediator.errors import LabError
from remediator.lab.binaries import cache_root
from remediator.lab.procs import ManagedProcess, Supervisor

_BIND_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}

LIBVIRTD_CONF = """\
listen_tls = 0
listen_tcp = 0
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "{host_uuid}"
log_outputs = "3:stderr"
"""

# qemu runs as root without a security driver: a lab on one machine, not a multi-tenant host.
# stdio_handler "file" because no virtlogd runs.
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
"""


def _capabilities_cache() -> Path:
    return cache_root().parent / "libvirt-qemu-capabilities"


class LabLibvirtd:
    """One private libvirtd: start, connect, stop."""

    def __init__(
        self,
        name: str,
        root: Path,
        supervisor: Supervisor,
        host_uuid: str | None = None,
        *,
        migration_ports: tuple[int, int] | None = None,
    ) -> None:
        """``migration_ports``: the (first, last) port of this daemon's incoming migrations; give
        every daemon that may receive a migration at the same time as another a range of its own."""
        self.name = name
        self.root = root
        self.supervisor = supervisor
        self.host_uuid = host_uuid or str(uuid.uuid4())
        self.migration_ports = migration_ports
        self.proc: ManagedProcess | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.root / "libvirtd.log"

    def _prepare(self) -> None:
        for sub in _BIND_DIRS:
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(host_uuid=self.host_uuid))
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF + self._migration_conf())
        seed = _capabilities_cache()
        if seed.is_dir():
            shutil.copytree(seed, self.root / "cache" / "qemu" / "capabilities", dirs_exist_ok=True)

    def _migration_conf(self) -> str:
        if self.migration_ports is None:
            return ""
        first, last = self.migration_ports
        if not 1024 <= first <= last <= 65535:
            raise LabError(f"configure libvirtd ({self.name})", f"bad migration ports {first}-{last}")
        return f"migration_port_min = {first}\nmigration_port_max = {last}\n"

    def spawn(self) -> ManagedProcess:
        """Start the daemon process (returns at once; ``connect`` waits for it)."""
        self._prepare()
        mounts = " && ".join(
            f"mkdir -p {target} && mount --bind {self.root / sub} {target}"
            for sub, target in _BIND_DIRS.items()
        )
        self.proc = self.supervisor.spawn(
            f"libvirtd-{self.name}",
            # The pid file defaults to /run/libvirtd.pid, shared by every daemon: keep it private.
            ["sh", "-c", f"{mounts} && exec libvirtd --pid-file=/run/libvirt/libvirtd.pid"],
            self.log_path,
            wrapper=["unshare", "--mount", "--propagation", "private"],
        )
        return self.proc

    def connect(self, timeout: float = 90.0) -> Any:
        """A libvirt connection once the daemon answers; saves the capability cache for next time."""
        import libvirt

        step = f"start libvirtd ({self.name})"
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.proc is not None and not self.proc.alive():
                raise LabError(step, f"libvirtd exited with code {self.proc.returncode}", str(self.log_path))
            if time.monotonic() >= deadline:
                raise LabError(step, f"no socket after {timeout:.0f}s", str(self.log_path))
            time.sleep(0.05)
        try:
            conn = libvirt.open(self.uri)
            conn.getCapabilities()
        except libvirt.libvirtError as exc:
            raise LabError(step, f"cannot connect: {exc.get_error_message()}", str(self.log_path)) from exc
        self._save_capabilities()
        return conn

    def _save_capabilities(self) -> None:
        produced = self.root / "cache" / "qemu" / "capabilities"
        if produced.is_dir() and any(produced.iterdir()):
            target = _capabilities_cache()
            target.mkdir(parents=True, exist_ok=True)
            for item in produced.iterdir():
                shutil.copy2(item, target / item.name)

    def stop(self) -> None:
        if self.proc is not None:
            self.supervisor.stop(self.proc)
