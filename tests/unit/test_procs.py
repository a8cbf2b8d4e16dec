"""The lab's process supervisor against real processes (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from remediator.lab.procs import Supervisor


def test_spawn_logs_and_stop(tmp_path: Path) -> None:
    supervisor = Supervisor()
    log = tmp_path / "sleeper.log"
    proc = supervisor.spawn("sleeper", ["sh", "-c", "echo hello; exec sleep 60"], log)
    assert proc.alive()
    assert supervisor.stop(proc, timeout=5) == -15
    assert not proc.alive()
    assert "hello" in log.read_text()
    assert supervisor.running() == []


def test_exit_status_is_recorded_for_a_process_that_dies_on_its_own(tmp_path: Path) -> None:
    supervisor = Supervisor()
    proc = supervisor.spawn("quick", ["sh", "-c", "echo bye >&2; exit 7"], tmp_path / "q.log")
    assert proc.wait(10) == 7
    assert proc.log_tail(1) == "bye"


def test_a_process_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    supervisor = Supervisor()
    script = "trap '' TERM; echo ARMED; while :; do sleep 0.05; done"
    proc = supervisor.spawn("stubborn", ["sh", "-c", script], tmp_path / "s.log")
    # Wait until the trap is installed: the shell prints ARMED on a line of its own after it.
    for _ in range(500):
        if "\nARMED" in proc.log_path.read_text():
            break
        proc.wait(0.01)
    assert supervisor.stop(proc, timeout=0.3) == -9


def test_subreaper_reaps_orphans_and_children_die_with_the_supervisor(tmp_path: Path) -> None:
    # Run in a separate interpreter: becoming a subreaper changes the whole process.
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from pathlib import Path
        from remediator.lab.procs import Supervisor, become_subreaper
        assert become_subreaper()
        sup = Supervisor()
        # The shell exits at once; its background sleep is orphaned and re-parented to us.
        orphaner = "sleep 0.3 & echo $! > {tmp_path}/orphan.pid"
        sup.spawn("orphaner", ["sh", "-c", orphaner], Path("{tmp_path}/o.log"))
        sup.spawn("long", ["sleep", "60"], Path("{tmp_path}/l.log"))
        orphan = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = Path("{tmp_path}/orphan.pid").read_text() if Path("{tmp_path}/orphan.pid").exists() else ""
            if text.strip():
                orphan = int(text)
                break
            time.sleep(0.01)
        assert orphan
        while time.monotonic() < deadline and Path(f"/proc/{{orphan}}").exists():
            time.sleep(0.01)
        # Reaped: no zombie left behind.
        assert not Path(f"/proc/{{orphan}}").exists(), "orphan not reaped"
        print([p.pid for p in sup.running()][0], flush=True)
        os._exit(0)  # die abruptly: no stop_all
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    long_pid = int(out.strip())
    # The parent-death signal took the long-running child down with its supervisor.
    for _ in range(500):
        if not Path(f"/proc/{long_pid}").exists():
            break
        subprocess.run(["true"], check=True)
    status = (
        Path(f"/proc/{long_pid}/stat").read_text().split()[2]
        if Path(f"/proc/{long_pid}").exists()
        else "gone"
    )
    assert status in ("gone", "Z")
