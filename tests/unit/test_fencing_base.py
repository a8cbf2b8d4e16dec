"""Value types of the fence driver interface."""

from __future__ import annotations

from remediator.fencing.base import Credentials, Identity, PowerState, normalize_uuid


def test_credentials_hide_the_password() -> None:
    creds = Credentials("admin", "hunter2")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds])):
        assert "hunter2" not in text
        assert "admin" in text


def test_uuid_normalisation() -> None:
    want = "6695eb01-f6a4-8304-79aa-97f2502e193f"
    for spelled in (want.upper(), "{" + want + "}", "urn:uuid:" + want, want.replace("-", ""), f"  {want} "):
        assert normalize_uuid(spelled) == want
    assert normalize_uuid("") is None
    assert normalize_uuid(None) is None
    assert normalize_uuid(" Not-A-UUID ") == "not-a-uuid"


def test_identity_comparison_only_when_both_known() -> None:
    ident = Identity("6695EB01-F6A4-8304-79AA-97F2502E193F", " SN1 ")
    assert ident.system_uuid == "6695eb01-f6a4-8304-79aa-97f2502e193f"
    assert ident.serial == "SN1"
    assert ident.uuid_matches("6695eb01-f6a4-8304-79aa-97f2502e193f") is True
    assert ident.uuid_matches("00000000-0000-0000-0000-000000000001") is False
    assert ident.uuid_matches(None) is None
    assert Identity(None, None).uuid_matches("6695eb01-f6a4-8304-79aa-97f2502e193f") is None
    assert Identity("", "").serial is None


def test_power_state_str() -> None:
    assert str(PowerState.UNKNOWN) == "unknown"
