"""The IPMI driver against the lab's pyghmi-based BMC, every fault included."""

from __future__ import annotations

import statistics
import time

import pytest

from remediator.errors import (
    BmcAuthenticationFailed,
    BmcProtocolError,
    BmcTimeout,
    IdentityMismatch,
    PowerStateNotReached,
)
from remediator.fencing import open_driver
from remediator.fencing.address import parse_bmc_address
from remediator.fencing.base import Credentials, PowerState
from remediator.fencing.ipmi import IpmiDriver
from remediator.fencing.verify import check_identity, power_off_verified, power_on_verified, reboot_verified
from remediator.lab.bmc import IpmiBmc

pytestmark = pytest.mark.integration


def _driver(address: str, creds: Credentials, **kwargs: object) -> IpmiDriver:
    return IpmiDriver(parse_bmc_address(address), creds, **kwargs)


def test_off_on_reboot_verified(ipmi: IpmiBmc, creds: Credentials) -> None:
    with _driver(ipmi.address, creds, legacy_sha1=True, timeout=5) as drv:
        off = power_off_verified(drv, 10)
        assert off.state is PowerState.OFF and off.command_sent
        assert not ipmi.is_on()
        assert not power_off_verified(drv, 10).command_sent
        assert power_on_verified(drv, 10).state is PowerState.ON and ipmi.is_on()
        assert reboot_verified(drv, 10).state is PowerState.ON
        assert "legacy_sha1" in drv.describe() and creds.password not in drv.describe()


def test_status_over_an_open_session_is_fast(ipmi: IpmiBmc, creds: Credentials) -> None:
    with _driver(ipmi.address, creds, legacy_sha1=True, timeout=5) as drv:
        drv.power_state()
        samples = []
        for _ in range(20):
            start = time.monotonic()
            assert drv.power_state() is PowerState.ON
            samples.append(time.monotonic() - start)
    median = statistics.median(samples)
    print(f"ipmi status over an open session: median {median * 1000:.2f} ms")
    assert median < 0.05


def test_identity_from_system_guid(ipmi: IpmiBmc, creds: Credentials) -> None:
    with _driver(ipmi.address, creds, legacy_sha1=True) as drv:
        assert check_identity(drv, str(ipmi.system_uuid).upper()).system_uuid == ipmi.system_uuid
        with pytest.raises(IdentityMismatch):
            check_identity(drv, "00000000-0000-0000-0000-000000000001")


def test_sha1_bmc_without_the_option_names_it(ipmi: IpmiBmc, creds: Credentials) -> None:
    with (
        pytest.raises(BmcProtocolError, match="legacy_sha1") as info,
        _driver(ipmi.address, creds, timeout=5) as drv,
    ):
        drv.power_state()
    assert creds.password not in str(info.value)
    # the failed session is retired: a correctly configured driver works right after
    with _driver(ipmi.address, creds, legacy_sha1=True, timeout=5) as drv:
        assert drv.power_state() is PowerState.ON


def test_wrong_password(ipmi: IpmiBmc, creds: Credentials) -> None:
    with (
        pytest.raises(BmcAuthenticationFailed) as info,
        _driver(
            ipmi.address, Credentials(creds.username, "wrong-" + creds.password), legacy_sha1=True, timeout=5
        ) as drv,
    ):
        drv.power_state()
    assert "wrong-" not in str(info.value) and not info.value.retryable


def test_dead_bmc_is_reported_within_the_timeout(closed_udp_port: int, creds: Credentials) -> None:
    start = time.monotonic()
    with (
        pytest.raises(BmcTimeout, match="within 1s"),
        _driver(f"ipmi://127.0.0.1:{closed_udp_port}", creds, legacy_sha1=True, timeout=1) as drv,
    ):
        drv.power_state()
    assert time.monotonic() - start < 1.5


def test_stuck_bmc(ipmi: IpmiBmc, creds: Credentials) -> None:
    ipmi.set_stuck(True)
    with (
        pytest.raises(PowerStateNotReached, match="last state seen: on"),
        _driver(ipmi.address, creds, legacy_sha1=True) as drv,
    ):
        power_off_verified(drv, 1.0)
    assert ipmi.is_on()


def test_bmc_restart_is_survived(ipmi: IpmiBmc, creds: Credentials) -> None:
    """A BMC that went away: the call times out; once back, a new session is opened."""
    with _driver(ipmi.address, creds, legacy_sha1=True, timeout=1) as drv:
        assert drv.power_state() is PowerState.ON
        ipmi.stop()
        try:
            with pytest.raises(BmcTimeout):
                drv.power_state()
        finally:
            ipmi._requested_port = ipmi.port
            ipmi.start()
        assert drv.power_state() is PowerState.ON


def test_tls_options_are_refused_for_ipmi(ipmi: IpmiBmc, creds: Credentials) -> None:
    from remediator.errors import ConfigError

    with pytest.raises(ConfigError):
        open_driver(ipmi.address, creds, insecure=True)
