"""The handler's thin wrapper over libvirt: list, start, destroy and live-migrate domains.

Every libvirt error is wrapped here (:class:`HypervisorError`, :class:`MigrationFailed`); nothing else
in vmcore imports libvirt except the safety check, which only reads. Live migration is peer-to-peer
(``migrateToURI3`` with ``VIR_MIGRATE_PEER2PEER``): the source libvirtd talks to the target's, qemu
streams memory over ``tcp://127.0.0.1`` with the target listening on 127.0.0.1 only; a progress
callback sees libvirt's job statistics, and a completion timeout aborts the job (the guest keeps
running on the source). Target libvirtds that may receive migrations at the same time must allocate
incoming ports from ranges of their own (``migration_port_min/max`` in qemu.conf; the lab does).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

from vmcore.errors import HypervisorError, MigrationFailed, UnsafePath

log = logging.getLogger(__name__)

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

#: (domain name, event) with event one of started, resumed, suspended, shutdown, crashed, destroyed, migrated.
DomainListener = Callable[[str, str], None]

_loop_lock = threading.Lock()
_loop_started = False


def ensure_event_loop() -> None:
    """libvirt's default event loop, run by one daemon thread per process."""
    global _loop_started  # noqa: PLW0603 - libvirt's event implementation is process-wide
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


def kvm_usable() -> bool:
    """Whether /dev/kvm opens and answers (guests then use KVM; otherwise TCG)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, 0xAE00) == 12  # KVM_GET_API_VERSION
    except OSError:
        return False
    finally:
        os.close(fd)


def check_path(path: str, *, must_exist: bool = True) -> Path:
    """``path`` if it is absolute, has no '..' and no symlink anywhere along it; else UnsafePath."""
    if not os.path.isabs(path) or ".." in Path(path).parts:
        raise UnsafePath(f"{path!r} must be an absolute path without '..'")
    current = Path("/")
    for part in Path(path).parts[1:]:
        current = current / part
        try:
            if current.is_symlink():
                raise UnsafePath(f"{path!r} goes through the symlink {current}; refused")
        except OSError as exc:
            raise UnsafePath(f"{path!r}: {exc}") from exc
    if must_exist and not Path(path).is_file():
        raise UnsafePath(f"{path!r} is not an existing regular file")
    return Path(path)


def _error(exc: libvirt.libvirtError) -> str:
    return str(exc.get_error_message() or exc)


def _event_name(event: int, detail: int) -> str:
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
        return "started"
    if event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
        return "resumed"
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        return "suspended"
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return "crashed"
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        return {
            libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "crashed",
            libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
        }.get(detail, "destroyed")
    return "other"


@dataclass(frozen=True)
class MigrationResult:
    downtime_ms: int | None
    transferred_bytes: int
    elapsed_ms: int


def peer_uri(uri: str) -> str:
    """The URI the source libvirtd opens for a peer-to-peer migration to the libvirt at ``uri``.

    libvirt refuses a peer URI without a host as "the same host" unless its transport is explicitly
    ``unix`` with a ``socket`` (it then trusts the caller to mean another daemon), so
    ``qemu:///system?socket=S`` becomes ``qemu+unix:///system?socket=S``; anything else is unchanged.
    """
    scheme, sep, rest = uri.partition(":///")
    if sep and scheme == "qemu" and "socket=" in rest:
        return f"qemu+unix:///{rest}"
    return uri


#: How often a migration is retried when the target's incoming port was taken meanwhile.
PORT_RACE_RETRIES = 2


#: Called with (percent done, bytes transferred) while a migration runs.
ProgressCallback = Callable[[int, int], None]


class Hypervisor:
    """One node's libvirt connection."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None

    def connect(self, listener: DomainListener | None = None, timeout: float = 120.0) -> None:
        ensure_event_loop()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._conn = libvirt.open(self.uri)
                break
            except libvirt.libvirtError as exc:
                if time.monotonic() >= deadline:
                    raise HypervisorError(f"cannot connect to {self.uri}: {_error(exc)}") from exc
                time.sleep(0.2)
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.setKeepAlive(2, 3)
        if listener is not None:

            def on_event(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
                listener(dom.name(), _event_name(event, detail))

            self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)

    def domains(self) -> dict[str, str]:
        """Every domain of this libvirt (defined or running): name -> state ("running", "shutoff", ...)."""
        try:
            return {d.name(): STATE_NAMES.get(d.state()[0], "nostate") for d in self._conn.listAllDomains(0)}
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"listing domains: {_error(exc)}") from exc

    def start(self, xml: str) -> None:
        """Define the domain (persistently) and start it."""
        try:
            domain = self._conn.defineXML(xml)
            domain.create()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"starting domain: {_error(exc)}") from exc

    def destroy(self, name: str) -> None:
        """Power the domain off at once and remove its definition; nothing if it is not there."""
        try:
            domain = self._conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        try:
            if domain.isActive():
                domain.destroy()
        except libvirt.libvirtError as exc:
            try:
                still = domain.isActive()
            except libvirt.libvirtError:
                still = False  # gone meanwhile (migrated away, or stopped): nothing left to destroy
            if still:
                raise HypervisorError(f"destroying {name}: {_error(exc)}") from exc
        with contextlib.suppress(libvirt.libvirtError):
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)

    def migrate(
        self,
        name: str,
        target_uri: str,
        *,
        timeout: float,
        bandwidth_mibps: int = 0,
        unsafe: bool = False,
        progress: ProgressCallback | None = None,
        address: str = "127.0.0.1",
        port: int | None = None,
    ) -> MigrationResult:
        """Move ``name`` live, peer-to-peer, to the libvirt at ``target_uri``; abort after ``timeout`` s.

        The source libvirtd connects to the target's itself (``migrateToURI3`` with
        ``VIR_MIGRATE_PEER2PEER``, to :func:`peer_uri` of ``target_uri``). qemu streams memory to
        ``tcp://ADDRESS[:PORT]``, the target qemu listening on ``address`` only. A migration that
        fails before any byte moved because the target's port was taken (another daemon's migration
        won the race) is tried again.
        """
        try:
            domain = self._conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise MigrationFailed("DomainGone", _error(exc)) from exc
        params: dict[str, Any] = {
            libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{address}" + (f":{port}" if port else ""),
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: address,
        }
        if bandwidth_mibps:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mibps
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        if unsafe:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        started = time.monotonic()
        done = threading.Event()
        timed_out = threading.Event()
        last_bytes = [0]

        def watch() -> None:
            while not done.wait(0.1):
                with contextlib.suppress(libvirt.libvirtError):
                    stats = domain.jobStats()
                    total = int(stats.get("memory_total", 0) or 0)
                    remaining = int(stats.get("memory_remaining", 0) or 0)
                    sent = int(stats.get("data_processed", stats.get("memory_processed", 0)) or 0)
                    last_bytes[0] = max(last_bytes[0], sent)
                    if progress is not None and total:
                        progress(int(100 * (total - remaining) / total), sent)
                if time.monotonic() - started > timeout and not timed_out.is_set():
                    timed_out.set()
                    with contextlib.suppress(libvirt.libvirtError):
                        domain.abortJob()

        watcher = threading.Thread(target=watch, name=f"migrate-{name}", daemon=True)
        watcher.start()
        dconnuri = peer_uri(target_uri)
        try:
            for attempt in range(PORT_RACE_RETRIES + 1):
                try:
                    domain.migrateToURI3(dconnuri, params, flags)
                    break
                except libvirt.libvirtError as exc:
                    if timed_out.is_set():
                        raise MigrationFailed("Timeout", f"not done after {timeout:g}s; aborted") from exc
                    message = _error(exc)
                    if "Address already in use" in message and attempt < PORT_RACE_RETRIES:
                        log.info("migration of %s: target port taken; trying again", name)
                        continue
                    raise MigrationFailed("MigrationFailed", message) from exc
        finally:
            done.set()
            watcher.join(2.0)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return self._completed_stats(name, target_uri, elapsed_ms, last_bytes[0])

    @staticmethod
    def _completed_stats(name: str, target_uri: str, elapsed_ms: int, sent: int) -> MigrationResult:
        """libvirt's statistics of the completed job, read on the target (where the domain now is)."""
        try:
            conn = libvirt.open(target_uri)
        except libvirt.libvirtError:
            return MigrationResult(None, sent, elapsed_ms)
        try:
            stats = conn.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            return MigrationResult(None, sent, elapsed_ms)
        finally:
            conn.close()
        downtime = stats.get("downtime")
        transferred = int(stats.get("data_processed", stats.get("memory_processed", sent)) or sent)
        return MigrationResult(int(downtime) if downtime is not None else None, transferred, elapsed_ms)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None
