"""Process supervision for the lab daemon.

The lab daemon starts every process of the lab (etcd, the Kubernetes control plane, one kwok per
host, and in later steps libvirtd, BMC emulators and controllers). This module owns them:

* every child is started through ``setpriv --pdeathsig KILL`` so it dies with the daemon even if the
  daemon is killed hard, and in its own session so a Ctrl-C in a terminal reaches only the CLI;
* the daemon can make itself a *child subreaper*: orphaned grandchildren (a qemu that libvirtd
  spawned, for example) are re-parented to it, and one reaper thread collects every exit at once.
  Without that, this sandbox's PID 1 reaps late and ``virDomainDestroy`` waits 1-2 s for a zombie;
* stopping is SIGTERM, a deadline, then SIGKILL, and always waits for the exit.

Children must be spawned from one long-lived thread (the daemon's main loop): the kernel sends the
parent-death signal when the *thread* that forked a child exits. The reaper collects *every* child of
the process, so a plain ``subprocess.run`` inside a process with a Supervisor sees no exit status
(ECHILD, reported as 0): start anything whose exit status matters through :meth:`Supervisor.spawn`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants. Returns whether it worked."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl: Any = libc.prctl
    return bool(prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


@dataclass
class ManagedProcess:
    """A child process of the supervisor and what became of it."""

    name: str
    argv: list[str]
    log_path: Path
    pid: int
    started_at: float
    returncode: int | None = None
    exited: threading.Event = field(default_factory=threading.Event)

    def alive(self) -> bool:
        return not self.exited.is_set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status once the process has exited, or None if it still runs at the deadline."""
        self.exited.wait(timeout)
        return self.returncode

    def exit_summary(self) -> str:
        """One line: how it exited and the last lines it logged (each cut short)."""
        tail = " | ".join(line[:240] for line in self.log_tail(2).splitlines())
        return f"{self.name} exited with code {self.returncode}: {tail}"

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


class _Reaper:
    """The process's one reaper thread (``waitpid(-1)`` collects every child, so there is one per
    process, shared by every Supervisor in it) and the table of the children it reports on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.children_changed = threading.Condition(self.lock)
        self.by_pid: dict[int, ManagedProcess] = {}
        self._thread: threading.Thread | None = None

    def ensure_running(self) -> None:
        with self.lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._reap_forever, name="reaper", daemon=True)
                self._thread.start()

    def _reap_forever(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                with self.lock:
                    self.children_changed.wait(timeout=1.0)
                continue
            with self.lock:
                proc = self.by_pid.pop(pid, None)
                if proc is not None:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    proc.exited.set()
            if proc is not None:
                log.debug("%s (pid %d) exited with %s", proc.name, pid, proc.returncode)


_REAPER = _Reaper()


class Supervisor:
    """Starts, watches and stops a set of processes; exits are collected by the process's reaper."""

    def __init__(self) -> None:
        self._lock = _REAPER.lock
        self._children_changed = _REAPER.children_changed
        self._mine: list[ManagedProcess] = []
        _REAPER.ensure_running()

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        wrapper: Sequence[str] = (),
    ) -> ManagedProcess:
        """Start ``argv`` with stdout and stderr appended to ``log_path``.

        ``wrapper`` is put between the death-signal wrapper and ``argv`` (e.g. ``unshare -m``).
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full = ["setpriv", "--pdeathsig", "KILL", "--", *wrapper, *argv]
        with log_path.open("ab") as out, self._lock:
            out.write(f"=== {time.ctime()} starting: {' '.join(argv)}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
            # The reaper owns exit statuses; Popen must never wait on its own.
            popen.returncode = 0
            proc = ManagedProcess(name, list(argv), log_path, popen.pid, time.monotonic())
            _REAPER.by_pid[popen.pid] = proc
            self._mine.append(proc)
            self._children_changed.notify_all()
        log.debug("started %s (pid %d)", name, proc.pid)
        return proc

    def stop(self, proc: ManagedProcess, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal ``proc`` (and its process group), wait up to ``timeout``, then SIGKILL and wait."""
        if not proc.alive():
            return proc.returncode
        self._signal(proc, sig)
        if proc.wait(timeout) is None and proc.alive():
            self._signal(proc, signal.SIGKILL)
            proc.wait(10.0)
        return proc.returncode

    def kill(self, proc: ManagedProcess) -> int | None:
        """SIGKILL at once: how a power cut or a crash looks to the rest of the lab."""
        return self.stop(proc, timeout=0.0, sig=signal.SIGKILL)

    def stop_all(self, timeout: float = 10.0) -> None:
        with self._lock:
            procs = [p for p in self._mine if p.alive()]
        # Stop the newest first: kwok before the API server, the API server before etcd.
        for proc in sorted(procs, key=lambda p: p.started_at, reverse=True):
            self.stop(proc, timeout)

    def kill_orphans(self) -> None:
        """SIGKILL every remaining child of this process: orphans re-parented to the subreaper
        (a qemu whose libvirtd is gone) that nothing else would stop."""
        me = str(os.getpid())
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == me and fields[0] != "Z":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)

    def pause(self, proc: ManagedProcess) -> None:
        """SIGSTOP: the process stays, but says nothing (a network partition, as seen from outside)."""
        if proc.alive():
            self._signal(proc, signal.SIGSTOP)

    def resume(self, proc: ManagedProcess) -> None:
        if proc.alive():
            self._signal(proc, signal.SIGCONT)

    def running(self) -> list[ManagedProcess]:
        with self._lock:
            self._mine = [p for p in self._mine if p.alive()]
            return list(self._mine)

    @staticmethod
    def _signal(proc: ManagedProcess, sig: int) -> None:
        # The whole process group first (a child's own helpers go too), then the process alone.
        for send in (os.killpg, os.kill):
            try:
                send(proc.pid, sig)
                return
            except ProcessLookupError:
                continue
            except PermissionError as exc:  # pragma: no cover - only if a pid was recycled
                log.warning("cannot signal %s (pid %d): %s", proc.name, proc.pid, exc)
                return
