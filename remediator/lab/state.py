"""Where a lab keeps its files, and its status file ``lab.json``.

A lab lives in one state directory (``--state-dir``, ``$REMEDIATOR_LAB_DIR``, or
``$XDG_STATE_HOME/remediator/lab``). The daemon writes ``lab.json`` atomically at every step so that
the CLI can follow a start, find the daemon, and tell a running lab from a dead one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_STARTING = "starting"
STATUS_READY = "ready"
STATUS_FAILED = "failed"
STATUS_STOPPING = "stopping"
STATUS_STOPPED = "stopped"


def default_state_dir() -> Path:
    explicit = os.environ.get("REMEDIATOR_LAB_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "remediator" / "lab"


def host_name(index: int) -> str:
    """Lab host names are lab-host-1 ... lab-host-N; node names equal host names."""
    return f"lab-host-{index}"


@dataclass(frozen=True)
class LabPaths:
    """Every file and directory of one lab."""

    root: Path

    @property
    def status_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def socket(self) -> Path:
        return self.root / "control.sock"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def kwok(self) -> Path:
        return self.root / "kwok"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    def read_status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def write_status(self, status: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.status_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(status, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.status_file)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); read its state to tell.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
