"""`remediator bmc ...` end to end against the real emulators."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remediator.fencing.base import Credentials
from remediator.lab.bmc import IpmiBmc, ScriptedRedfishBmc, SushyEmulator
from tests.integration.conftest import TEST_DOMAIN_UUID

pytestmark = pytest.mark.integration


def _main(argv: list[str]) -> int:
    from remediator import cli
    from remediator.fencing import cli as bmc_cli

    try:
        cli.build_parser()
    except ImportError:  # the full CLI needs remediator.lab.cli, which may not be there yet
        return bmc_cli.main(argv)
    return cli.main(argv)


def run(argv: list[str], capsys: pytest.CaptureFixture[str], creds: Credentials) -> tuple[int, str, str]:
    code = _main(["bmc", *argv])
    out, err = capsys.readouterr()
    assert creds.password not in out and creds.password not in err
    return code, out, err


@pytest.fixture
def password_env(monkeypatch: pytest.MonkeyPatch, creds: Credentials) -> None:
    monkeypatch.setenv("REMEDIATOR_BMC_PASSWORD", creds.password)


@pytest.mark.usefixtures("password_env")
def test_redfish_off_on_status_json(
    sushy_libvirt: SushyEmulator, ca_file: str, capsys: pytest.CaptureFixture[str], creds: Credentials
) -> None:
    common = [sushy_libvirt.address(), "--username", creds.username, "--ca-file", ca_file, "--timeout", "10"]
    assert run(["on", *common], capsys, creds)[0] == 0
    code, out, _ = run(["off", *common, "--json"], capsys, creds)
    doc = json.loads(out)
    assert code == 0 and doc["state"] == "off" and doc["action"] == "off" and doc["command_sent"]
    code, out, _ = run(["status", *common], capsys, creds)
    assert code == 0 and out.strip().endswith(": off")
    code, out, _ = run(["reboot", *common, "--expect-uuid", TEST_DOMAIN_UUID], capsys, creds)
    assert code == 0 and "on (read back" in out
    code, out, _ = run(["identify", *common, "--json"], capsys, creds)
    assert code == 0 and json.loads(out)["system_uuid"] == TEST_DOMAIN_UUID


def test_password_file_and_ipmi(
    ipmi: IpmiBmc, tmp_path: Path, capsys: pytest.CaptureFixture[str], creds: Credentials
) -> None:
    secret = tmp_path / "pw"
    secret.write_text(creds.password + "\n")
    common = [
        ipmi.address,
        "--username",
        creds.username,
        "--password-file",
        str(secret),
        "--ipmi-legacy-sha1",
    ]
    code, out, _ = run(["off", *common], capsys, creds)
    assert code == 0 and "off (read back" in out and not ipmi.is_on()
    code, out, _ = run(["identify", *common], capsys, creds)
    assert code == 0 and str(ipmi.system_uuid) in out


@pytest.mark.usefixtures("password_env")
def test_cli_errors_are_one_clean_line(
    scripted: ScriptedRedfishBmc,
    sushy_libvirt: SushyEmulator,
    ca_file: str,
    capsys: pytest.CaptureFixture[str],
    creds: Credentials,
) -> None:
    scripted.systems["1"].stuck = True
    code, out, err = run(
        ["off", scripted.address(), "--username", creds.username, "--ca-file", ca_file, "--timeout", "1"],
        capsys,
        creds,
    )
    assert code == 1 and out == ""
    assert err.startswith("remediator: error: ") and "last state seen: on" in err and err.count("\n") == 1

    code, _, err = run(["status", sushy_libvirt.address(), "--username", creds.username], capsys, creds)
    assert code == 1 and "TLS failed" in err

    code, _, err = run(
        [
            "identify",
            scripted.address(),
            "--username",
            creds.username,
            "--ca-file",
            ca_file,
            "--expect-uuid",
            "00000000-0000-0000-0000-000000000009",
        ],
        capsys,
        creds,
    )
    assert code == 1 and "refusing" in err


def test_missing_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], creds: Credentials
) -> None:
    monkeypatch.delenv("REMEDIATOR_BMC_PASSWORD", raising=False)
    code, _, err = run(["status", "ipmi://127.0.0.1:1", "--username", creds.username], capsys, creds)
    assert code == 1 and "REMEDIATOR_BMC_PASSWORD" in err


@pytest.mark.usefixtures("password_env")
def test_wrong_password_output_is_clean(
    sushy_libvirt: SushyEmulator, ca_file: str, capsys: pytest.CaptureFixture[str], creds: Credentials
) -> None:
    code, _, err = run(
        ["status", sushy_libvirt.address(), "--username", "nobody", "--ca-file", ca_file], capsys, creds
    )
    assert code == 1 and "rejected the credentials" in err
