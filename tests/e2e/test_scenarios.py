"""Every lab scenario, once, against a full lab: each checks its own expected outcome (the Fence,
VMs back only after their host was proven off, no VM on two hosts at once, none lost)."""

from __future__ import annotations

import json

import pytest

from remediator.cli import main
from remediator.lab.scenarios import SCENARIOS, Lab, ScenarioRun
from remediator.lab.state import LabPaths

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario(full_lab: LabPaths, name: str) -> None:
    lines: list[str] = []
    result = ScenarioRun(Lab(full_lab), name, lines.append, vms_per_host=1).run()
    report = json.dumps(result.as_json(), indent=1, default=str)
    assert result.passed, f"{name} failed:\n" + "\n".join(lines) + "\n" + report
    assert result.double_running == 0
    assert result.vms_lost == 0
    if name not in ("storm", "maintenance"):
        assert result.mttr_seconds is not None and result.mttr_seconds > 0
        split = result.split()
        assert split["fencing"] is not None and split["vmRestart"] is not None


def test_scenario_cli_json(full_lab: LabPaths, capsys: pytest.CaptureFixture[str]) -> None:
    state_dir = str(full_lab.root)
    assert (
        main(["lab", "scenario", "power-loss", "--json", "--state-dir", state_dir, "--vms-per-host", "1"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["outcome"] == "passed"
    assert out["double_running"] == 0 and out["vms_lost"] == 0
    assert out["mttr_seconds"] > 0
    assert set(out["phases"]) == {"detection", "fencing", "vmRestart", "remediationOwn"}


def test_bad_scenario_input_is_refused(
    full_lab: LabPaths, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["lab", "scenario", "meteor", "--state-dir", str(full_lab.root)])
    assert "invalid choice: 'meteor'" in capsys.readouterr().err
    state_dir = str(full_lab.root)
    assert main(["lab", "scenario", "power-loss", "--host", "lab-host-9", "--state-dir", state_dir]) == 1
    assert "unknown host 'lab-host-9'" in capsys.readouterr().err
    assert main(["lab", "demo", "--state-dir", str(full_lab.root)]) == 1
    assert "a lab is already running" in capsys.readouterr().err


def test_scenario_without_a_lab(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "scenario", "power-loss", "--state-dir", str(tmp_path)]) == 1
    assert "no lab is running" in capsys.readouterr().err
