"""Fence drivers: power control you can trust.

``base`` defines the :class:`PowerDriver` interface, ``address`` parses BMC addresses, ``verify`` holds
the one poll-until-state loop and the verified operations, ``redfish`` and ``ipmi`` are the drivers.
:func:`open_driver` builds the right driver for an address; vendor libraries are imported only then.
"""

from __future__ import annotations

from remediator.errors import ConfigError
from remediator.fencing.address import BmcAddress, parse_bmc_address
from remediator.fencing.base import DEFAULT_CALL_TIMEOUT, Credentials, Identity, PowerDriver, PowerState

__all__ = [
    "BmcAddress",
    "Credentials",
    "Identity",
    "PowerDriver",
    "PowerState",
    "open_driver",
    "parse_bmc_address",
]


def open_driver(
    address: BmcAddress | str,
    credentials: Credentials,
    *,
    timeout: float = DEFAULT_CALL_TIMEOUT,
    ca_file: str | None = None,
    insecure: bool = False,
    redfish_auth: str = "basic",
    ipmi_legacy_sha1: bool = False,
) -> PowerDriver:
    """A driver for ``address`` (connecting lazily, on its first call).

    Redfish-only options (``ca_file``, ``insecure``, ``redfish_auth``) and IPMI-only ones
    (``ipmi_legacy_sha1``) are refused for the other protocol rather than silently ignored.
    """
    parsed = parse_bmc_address(address) if isinstance(address, str) else address
    if parsed.protocol == "redfish":
        if ipmi_legacy_sha1:
            raise ConfigError("the IPMI legacy SHA-1 option does not apply to a Redfish address")
        from remediator.fencing.redfish import RedfishDriver

        if redfish_auth not in ("basic", "session", "auto"):
            raise ConfigError(f"unknown Redfish auth mode {redfish_auth!r}; expected basic, session or auto")
        return RedfishDriver(
            parsed,
            credentials,
            timeout=timeout,
            ca_file=ca_file,
            insecure=insecure,
            auth=redfish_auth,  # type: ignore[arg-type]
        )
    if ca_file or insecure:
        raise ConfigError("TLS options (CA file, insecure) do not apply to an IPMI address")
    from remediator.fencing.ipmi import IpmiDriver

    return IpmiDriver(parsed, credentials, timeout=timeout, legacy_sha1=ipmi_legacy_sha1)
