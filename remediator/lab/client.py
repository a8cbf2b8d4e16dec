"""Talking to a lab: start its daemon, send it commands, wait for it, stop it.

The CLI and the test fixtures both go through this module, so tests exercise what users run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from remediator.errors import LabError, LabNotRunning
from remediator.lab import state
from remediator.lab.state import LabPaths, pid_alive
from remediator.lab.timers import LabTimers

Progress = Callable[[str], None]


def is_running(paths: LabPaths) -> bool:
    status = paths.read_status()
    return bool(
        status
        and status.get("status") in (state.STATUS_STARTING, state.STATUS_READY)
        and pid_alive(status.get("pid"))
    )


def request(paths: LabPaths, body: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one command to the lab daemon and return its reply; raise LabError if it refused."""
    if not paths.socket.exists() or not is_running(paths):
        raise LabNotRunning(str(paths.root))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(paths.socket))
            sock.sendall(json.dumps(body).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise LabError("lab", f"cannot talk to the lab daemon: {exc}", str(paths.daemon_log)) from exc
    try:
        reply = json.loads(data)
    except ValueError as exc:
        raise LabError("lab", "the lab daemon answered garbage", str(paths.daemon_log)) from exc
    if not reply.get("ok"):
        raise LabError(f"lab {body.get('command')}", str(reply.get("error")))
    return dict(reply)


def start(
    paths: LabPaths,
    host_count: int,
    timers: LabTimers,
    progress: Progress | None = None,
    timeout: float = 300.0,
    *,
    controller: bool = True,
    health_check: bool = True,
) -> dict[str, Any]:
    """Start a lab in the background and wait until it is ready. Returns its status.

    A lab that already runs in ``paths`` is left alone and its status returned (``"reused": True``).
    """
    say = progress or (lambda _line: None)
    if is_running(paths):
        status = wait_ready(paths, say, timeout)
        return {**status, "reused": True}
    _reset_state_dir(paths)
    paths.root.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "remediator.lab.daemon",
        f"--state-dir={paths.root}",
        f"--hosts={host_count}",
        f"--timers={json.dumps(asdict(timers))}",
    ]
    if not controller:
        argv.append("--no-controller")
    if not health_check:
        argv.append("--no-health-check")
    with paths.daemon_log.open("ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    paths.write_status(
        {"status": state.STATUS_STARTING, "pid": proc.pid, "step": "daemon", "stateDir": str(paths.root)}
    )
    try:
        return wait_ready(paths, say, timeout, daemon=proc)
    except BaseException:
        # Ctrl-C or a deadline while starting: leave nothing behind.
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise


def wait_ready(
    paths: LabPaths, say: Progress, timeout: float, daemon: subprocess.Popen[bytes] | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last_step = None
    while True:
        status = paths.read_status() or {}
        step = status.get("step")
        if step != last_step and step:
            say(f"[{time.monotonic() - started:5.1f}s] {step}")
            last_step = step
        if status.get("status") == state.STATUS_READY:
            return status
        if status.get("status") == state.STATUS_FAILED:
            raise LabError("lab up", str(status.get("error")), str(paths.daemon_log))
        exited = daemon.poll() is not None if daemon else not pid_alive(status.get("pid"))
        if exited:
            status = paths.read_status() or {}
            if status.get("status") == state.STATUS_FAILED:
                raise LabError("lab up", str(status.get("error")), str(paths.daemon_log))
            raise LabError("lab up", "the lab daemon exited while starting", str(paths.daemon_log))
        if time.monotonic() >= deadline:
            raise LabError(
                "lab up", f"not ready after {timeout:.0f}s (at step {step!r})", str(paths.daemon_log)
            )
        time.sleep(0.1)


def stop(paths: LabPaths, timeout: float = 60.0) -> bool:
    """Stop the lab in ``paths``. Returns False when there was none."""
    status = paths.read_status()
    if not status or not pid_alive(status.get("pid")):
        return False
    pid = int(status["pid"])
    try:
        request(paths, {"command": "down"}, timeout=timeout)
    except LabError:
        # Not answering (still starting, or wedged): SIGTERM asks for the same orderly teardown.
        os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            os.kill(pid, 9)  # its children die with it (parent-death signal)
            break
        time.sleep(0.05)
    return True


def _reset_state_dir(paths: LabPaths) -> None:
    """A new lab starts from an empty state dir (logs of the previous one go too)."""
    if paths.root.exists():
        for child in paths.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
