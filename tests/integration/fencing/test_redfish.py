"""The Redfish driver against sushy-emulator and a scripted Redfish BMC, every fault included."""

from __future__ import annotations

import statistics
import time

import pytest
import requests

from remediator.errors import (
    ActionNotSupported,
    BmcAuthenticationFailed,
    BmcProtocolError,
    BmcTlsError,
    BmcUnreachable,
    ConfigError,
    FenceError,
    IdentityMismatch,
    PowerStateNotReached,
)
from remediator.fencing import open_driver
from remediator.fencing.base import Credentials, PowerState
from remediator.fencing.redfish import RedfishDriver
from remediator.fencing.verify import (
    check_identity,
    power_off_verified,
    power_on_verified,
    reboot_verified,
)
from remediator.lab.bmc import ScriptedRedfishBmc, ScriptedSystem, SushyEmulator
from tests.integration.conftest import TEST_DOMAIN_UUID
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _driver(address: str, creds: Credentials, **kwargs: object) -> RedfishDriver:
    drv = open_driver(address, creds, **kwargs)
    assert isinstance(drv, RedfishDriver)
    return drv


def _assert_clean(exc: BaseException, creds: Credentials) -> None:
    text = f"{exc} {exc!r}"
    assert creds.password not in text


def test_libvirt_emulator_off_on_reboot_verified(
    sushy_libvirt: SushyEmulator, creds: Credentials, ca_file: str
) -> None:
    with _driver(sushy_libvirt.address(), creds, ca_file=ca_file) as drv:
        assert drv.power_state() in (PowerState.ON, PowerState.OFF)
        power_on_verified(drv, 10)
        off = power_off_verified(drv, 10)
        assert off.state is PowerState.OFF and off.command_sent
        again = power_off_verified(drv, 10)
        assert not again.command_sent and again.polls == 1
        assert power_on_verified(drv, 10).state is PowerState.ON
        reboot = reboot_verified(drv, 20)
        assert reboot.state is PowerState.ON and drv.power_state() is PowerState.ON
        assert check_identity(drv, TEST_DOMAIN_UUID.upper()).system_uuid == TEST_DOMAIN_UUID
        assert creds.password not in drv.describe() and creds.username not in drv.describe()


def test_explicit_system_path_and_session_reuse(
    sushy_libvirt: SushyEmulator, creds: Credentials, ca_file: str
) -> None:
    [path] = sushy_libvirt.system_paths()
    with _driver(sushy_libvirt.address(path), creds, ca_file=ca_file) as drv:
        assert drv.identity().system_uuid == TEST_DOMAIN_UUID


def test_several_systems_need_a_path(sushy_fake: SushyEmulator, creds: Credentials, ca_file: str) -> None:
    with (
        pytest.raises(ConfigError, match="2 systems"),
        _driver(sushy_fake.address(), creds, ca_file=ca_file) as drv,
    ):
        drv.power_state()


def test_unknown_system_path(sushy_libvirt: SushyEmulator, creds: Credentials, ca_file: str) -> None:
    address = sushy_libvirt.address("/redfish/v1/Systems/no-such-system")
    with pytest.raises(ConfigError, match="no system"), _driver(address, creds, ca_file=ca_file) as drv:
        drv.power_state()


def test_slow_bmc_is_waited_for(sushy_fake: SushyEmulator, creds: Credentials, ca_file: str) -> None:
    """The fake driver applies a power change at ``int(now) + randint(1, 11)``: the verify loop must
    keep polling until then."""
    path = next(
        p for p in sushy_fake.system_paths() if p.endswith((sushy_fake.fake_systems or [])[1]["uuid"])
    )
    with _driver(sushy_fake.address(path), creds, ca_file=ca_file) as drv:
        assert drv.power_state() is PowerState.OFF
        # Its delay counts from the start of the current second: send the command early in a second
        # so that the change lands at least 0.9 s later.
        wait_for(lambda: time.time() % 1 < 0.05, 2, "the start of a second", interval=0.005)
        result = power_on_verified(drv, 20)
        assert result.state is PowerState.ON and result.elapsed >= 0.9
        # Proportional back-off: reads every 50 ms for the first half second, then every tenth of
        # the time waited so far -- a multi-second wait takes tens of reads, not hundreds.
        assert result.polls < 25 + result.elapsed * 3


def test_wrong_password(sushy_libvirt: SushyEmulator, ca_file: str, creds: Credentials) -> None:
    with (
        pytest.raises(BmcAuthenticationFailed) as info,
        _driver(
            sushy_libvirt.address(), Credentials(creds.username, "wrong-" + creds.password), ca_file=ca_file
        ) as drv,
    ):
        drv.power_state()
    assert "wrong-" not in str(info.value)
    _assert_clean(info.value, creds)


def test_unreachable(closed_tcp_port: int, creds: Credentials, ca_file: str) -> None:
    start = time.monotonic()
    with (
        pytest.raises(BmcUnreachable, match="connection refused") as info,
        _driver(f"redfish://127.0.0.1:{closed_tcp_port}", creds, ca_file=ca_file, timeout=3) as drv,
    ):
        drv.power_state()
    assert time.monotonic() - start < 3
    assert info.value.retryable
    _assert_clean(info.value, creds)


@pytest.mark.parametrize("which_ca", ["system trust store", "other CA"])
def test_untrusted_certificate(
    sushy_libvirt: SushyEmulator, creds: Credentials, other_ca_file: str, which_ca: str
) -> None:
    ca = None if which_ca == "system trust store" else other_ca_file
    with (
        pytest.raises(BmcTlsError, match="TLS failed") as info,
        _driver(sushy_libvirt.address(), creds, ca_file=ca) as drv,
    ):
        drv.power_state()
    assert not info.value.retryable
    _assert_clean(info.value, creds)


def test_insecure_must_be_explicit_and_works(
    sushy_libvirt: SushyEmulator, creds: Credentials, ca_file: str
) -> None:
    with _driver(sushy_libvirt.address(), creds, insecure=True) as drv:
        assert drv.power_state() in (PowerState.ON, PowerState.OFF)
        assert "NOT verified" in drv.describe()
    with pytest.raises(ConfigError):
        open_driver(sushy_libvirt.address(), creds, insecure=True, ca_file=ca_file)


def test_plain_http_against_https_is_a_tls_or_protocol_error(
    sushy_libvirt: SushyEmulator, creds: Credentials
) -> None:
    with (
        pytest.raises(FenceError),
        _driver(f"redfish+http://127.0.0.1:{sushy_libvirt.port}", creds, timeout=3) as drv,
    ):
        drv.power_state()


@pytest.mark.parametrize("auth", ["basic", "session", "auto"])
def test_auth_modes(scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str, auth: str) -> None:
    with _driver(scripted.address(), creds, ca_file=ca_file, redfish_auth=auth) as drv:
        assert power_off_verified(drv, 5).state is PowerState.OFF
    if auth == "session":
        assert ("POST", "/redfish/v1/SessionService/Sessions") in scripted.requests
        assert scripted.requests[-1][0] == "DELETE"  # the session is closed again


def test_session_auth_wrong_password(scripted: ScriptedRedfishBmc, ca_file: str, creds: Credentials) -> None:
    with (
        pytest.raises(BmcAuthenticationFailed) as info,
        _driver(
            scripted.address(), Credentials(creds.username, "bad"), ca_file=ca_file, redfish_auth="session"
        ) as drv,
    ):
        drv.power_state()
    _assert_clean(info.value, creds)


def test_bmc_that_accepts_forceoff_but_stays_on(
    scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str
) -> None:
    scripted.systems["1"].stuck = True
    with (
        pytest.raises(PowerStateNotReached, match="last state seen: on") as info,
        _driver(scripted.address(), creds, ca_file=ca_file) as drv,
    ):
        power_off_verified(drv, 1.0)
    _assert_clean(info.value, creds)


def test_unparsable_power_state_is_never_off(
    scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str
) -> None:
    scripted.systems["1"].reported_power_state = "Bogus"
    with _driver(scripted.address(), creds, ca_file=ca_file) as drv:
        assert drv.power_state() is PowerState.UNKNOWN
        with pytest.raises(PowerStateNotReached, match="last state seen: unknown"):
            power_off_verified(drv, 0.5)


def test_garbage_answer(scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str) -> None:
    with _driver(scripted.address(), creds, ca_file=ca_file) as drv:
        drv.power_state()
        scripted.garbage = True
        with pytest.raises(BmcProtocolError, match="non-JSON") as info:
            drv.power_state()
    assert info.value.retryable
    _assert_clean(info.value, creds)


def test_unexpected_status(scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str) -> None:
    scripted.fail_status = 500
    with (
        pytest.raises(BmcProtocolError, match="HTTP 500") as info,
        _driver(scripted.address(), creds, ca_file=ca_file) as drv,
    ):
        drv.power_state()
    _assert_clean(info.value, creds)


def test_reset_type_not_allowed(scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str) -> None:
    scripted.systems["1"].allowed_reset_types = ["On", "GracefulShutdown"]
    with _driver(scripted.address(), creds, ca_file=ca_file) as drv:
        with pytest.raises(ActionNotSupported, match="does not allow ResetType ForceOff"):
            power_off_verified(drv, 2)
        assert scripted.systems["1"].power_on  # nothing was sent
        drv.graceful_shutdown()
        assert drv.power_state() is PowerState.OFF


def test_no_allowable_values_means_all_allowed(
    scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str
) -> None:
    scripted.systems["1"].allowed_reset_types = None
    with _driver(scripted.address(), creds, ca_file=ca_file) as drv:
        assert power_off_verified(drv, 2).state is PowerState.OFF


def test_identity_and_mismatch(scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str) -> None:
    with _driver(scripted.address(), creds, ca_file=ca_file) as drv:
        ident = check_identity(drv, TEST_DOMAIN_UUID)
        assert ident.serial == "SN-0001"
        with pytest.raises(IdentityMismatch, match="refusing"):
            check_identity(drv, "00000000-0000-0000-0000-000000000001")


def test_scripted_several_systems(scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str) -> None:
    scripted.systems["2"] = ScriptedSystem(id="2", power_on=False)
    with (
        pytest.raises(ConfigError, match="put the system path"),
        _driver(scripted.address(), creds, ca_file=ca_file) as drv,
    ):
        drv.power_state()
    with _driver(scripted.address("2"), creds, ca_file=ca_file) as drv:
        assert drv.power_state() is PowerState.OFF


def test_off_verified_is_as_fast_as_a_bare_client(
    scripted: ScriptedRedfishBmc, creds: Credentials, ca_file: str
) -> None:
    """ForceOff + read-back over one kept-alive connection, against a bare requests loop (50 ms polls)."""
    system = scripted.systems["1"]
    system.power_delay_s = 0.25
    url = f"{scripted.url}/redfish/v1/Systems/1"
    ours: list[float] = []
    bare: list[float] = []
    with _driver(scripted.address(), creds, ca_file=ca_file) as drv, requests.Session() as session:
        session.auth = (creds.username, creds.password)
        session.get(url, verify=ca_file).raise_for_status()
        for _ in range(3):
            power_on_verified(drv, 5)
            ours.append(power_off_verified(drv, 5).elapsed)
            power_on_verified(drv, 5)
            start = time.monotonic()
            session.post(
                f"{url}/Actions/ComputerSystem.Reset", json={"ResetType": "ForceOff"}, verify=ca_file
            )
            while session.get(url, verify=ca_file).json()["PowerState"] != "Off":
                time.sleep(0.05)
            bare.append(time.monotonic() - start)
    ratio = statistics.median(ours) / statistics.median(bare)
    print(
        f"redfish off+verified {statistics.median(ours):.3f}s,"
        f" bare {statistics.median(bare):.3f}s, x{ratio:.2f}"
    )
    assert ratio <= 1.1
