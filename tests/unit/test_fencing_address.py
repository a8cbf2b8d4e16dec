"""Parsing of Metal3/Ironic-style BMC addresses."""

from __future__ import annotations

import pytest

from remediator.errors import ConfigError
from remediator.fencing.address import BmcAddress, parse_bmc_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "redfish://10.0.0.5/redfish/v1/Systems/1",
            BmcAddress("redfish", "10.0.0.5", 443, "https", "/redfish/v1/Systems/1"),
        ),
        ("redfish+https://bmc.example:8443", BmcAddress("redfish", "bmc.example", 8443, "https", None)),
        (
            "redfish+http://127.0.0.1:8000/redfish/v1/Systems/abc/",
            BmcAddress("redfish", "127.0.0.1", 8000, "http", "/redfish/v1/Systems/abc"),
        ),
        ("REDFISH://host", BmcAddress("redfish", "host", 443, "https", None)),
        (
            "redfish://[fd00::5]:443/redfish/v1/Systems/1",
            BmcAddress("redfish", "fd00::5", 443, "https", "/redfish/v1/Systems/1"),
        ),
        ("ipmi://10.0.0.6", BmcAddress("ipmi", "10.0.0.6", 623)),
        ("ipmi://10.0.0.6:6230", BmcAddress("ipmi", "10.0.0.6", 6230)),
        ("  ipmi://bmc/  ", BmcAddress("ipmi", "bmc", 623)),
    ],
)
def test_valid_addresses(text: str, expected: BmcAddress) -> None:
    assert parse_bmc_address(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("10.0.0.5", "no scheme"),
        ("idrac-redfish://10.0.0.5", "unsupported scheme"),
        ("http://10.0.0.5", "unsupported scheme"),
        ("redfish://", "no host"),
        ("redfish://host:notaport", "invalid port"),
        ("redfish://host:0", "invalid port"),
        ("redfish://host/redfish/v1/Managers/1", "must name a system"),
        ("redfish://host/redfish/v1/Systems/1?x=1", "query"),
        ("ipmi://host/extra", "must not have a path"),
    ],
)
def test_invalid_addresses(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        parse_bmc_address(text)


def test_credentials_in_address_are_refused_and_not_echoed() -> None:
    with pytest.raises(ConfigError, match="contains credentials") as info:
        parse_bmc_address("redfish://admin:hunter2@10.0.0.5/redfish/v1/Systems/1")
    assert "hunter2" not in str(info.value)
    assert "admin" not in str(info.value)


def test_canonical_form_and_base_url() -> None:
    addr = parse_bmc_address("redfish+https://[fd00::5]/redfish/v1/Systems/1")
    assert str(addr) == "redfish://[fd00::5]:443/redfish/v1/Systems/1"
    assert addr.base_url == "https://[fd00::5]:443"
    assert str(parse_bmc_address("redfish+http://h:80")) == "redfish+http://h:80"
    assert str(parse_bmc_address("ipmi://h")) == "ipmi://h:623"
    with pytest.raises(ConfigError):
        _ = parse_bmc_address("ipmi://h").base_url
