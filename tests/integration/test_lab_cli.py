"""The lab CLI on its unhappy paths: no lab, bad arguments, a component that dies at start."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from remediator.cli import main
from remediator.lab import binaries

pytestmark = pytest.mark.integration


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_down_status_and_kubeconfig_without_a_lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "down", "--state-dir", str(tmp_path)]) == 0
    assert f"No lab is running in {tmp_path}" in capsys.readouterr().out
    assert main(["lab", "status", "--state-dir", str(tmp_path)]) == 0
    assert "No lab is running" in capsys.readouterr().out
    assert main(["lab", "kubeconfig", "--state-dir", str(tmp_path)]) == 1
    assert "no lab is running" in capsys.readouterr().err
    assert main(["lab", "fail", "lab-host-1", "--mode", "kubelet-hang", "--state-dir", str(tmp_path)]) == 1
    assert "start one with `remediator lab up`" in capsys.readouterr().err


def test_bad_host_count_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "up", "--hosts", "0", "--state-dir", str(tmp_path)]) == 1
    assert "--hosts must be between 1 and 50" in capsys.readouterr().err


def test_bad_timers_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "up", "--node-monitor-grace-period", "0.5", "--state-dir", str(tmp_path)]) == 1
    assert "grace" in capsys.readouterr().err


def test_a_component_that_exits_at_start_fails_the_step_and_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A deliberately broken kube-apiserver of the pinned version, found first through
    # $KUBEBUILDER_ASSETS exactly as a user's own binaries would be. Everything else is real.
    assets = tmp_path / "assets"
    assets.mkdir()
    broken = assets / "kube-apiserver"
    version = binaries.KUBE.version()
    broken.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--version" ]; then echo "Kubernetes {version}"; exit 0; fi\n'
        'echo "E1128 fatal: cannot listen: simulated crash at start" >&2\n'
        "exit 3\n"
    )
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    state_dir = tmp_path / "state"

    assert main(["lab", "up", "--hosts", "1", "--state-dir", str(state_dir)]) == 1

    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "remediator: error: lab up: start kube-apiserver: kube-apiserver exited with code 3"
    )
    assert "simulated crash at start" in err
    assert f"log: {state_dir}/logs/kube-apiserver.log" in err
    # etcd had started before the API server failed; it must be gone, and so must the daemon.
    assert _processes_mentioning(str(state_dir)) == []
    assert not (state_dir / "control.sock").exists()
    monkeypatch.delenv("KUBEBUILDER_ASSETS")
    assert main(["lab", "status", "--state-dir", str(state_dir)]) == 0
    assert os.path.exists(state_dir / "logs" / "etcd.log")
