"""Parse BMC addresses in the Metal3/Ironic style.

Accepted forms::

    redfish://host[:port][/redfish/v1/Systems/ID]         Redfish over HTTPS (port 443)
    redfish+https://host[:port][/redfish/v1/Systems/ID]   the same, spelled out
    redfish+http://host[:port][/redfish/v1/Systems/ID]    Redfish over plain HTTP (port 80)
    ipmi://host[:port]                                    IPMI 2.0 (lanplus) over UDP (port 623)

Without a system path the Redfish driver uses the only system the BMC lists. Hosts may be names,
IPv4 addresses or bracketed IPv6 addresses. Credentials never belong in an address: one that carries
a user or password is refused (and is not echoed back in the error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from remediator.errors import ConfigError

Protocol = Literal["redfish", "ipmi"]

_REDFISH_SCHEMES = {"redfish": "https", "redfish+https": "https", "redfish+http": "http"}
_DEFAULT_PORTS = {"https": 443, "http": 80, "ipmi": 623}
_SYSTEM_PATH = re.compile(r"^(/[^/?#]+)*/Systems/[^/?#]+$")
SUPPORTED_FORMS = "redfish://, redfish+http://, redfish+https:// or ipmi://"


@dataclass(frozen=True)
class BmcAddress:
    """A parsed BMC address. ``str()`` gives the canonical form (safe to log)."""

    protocol: Protocol
    host: str
    port: int
    #: ``https`` or ``http`` for Redfish, ``None`` for IPMI.
    scheme: str | None = None
    #: e.g. ``/redfish/v1/Systems/1``; ``None`` means "the only system".
    system_path: str | None = None

    @property
    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def base_url(self) -> str:
        """``https://host:port`` for Redfish (what an HTTP client connects to)."""
        if self.protocol != "redfish":
            raise ConfigError(f"{self} is not a Redfish address")
        return f"{self.scheme}://{self._host_for_url}:{self.port}"

    def __str__(self) -> str:
        if self.protocol == "ipmi":
            return f"ipmi://{self._host_for_url}:{self.port}"
        scheme = "redfish" if self.scheme == "https" else "redfish+http"
        return f"{scheme}://{self._host_for_url}:{self.port}{self.system_path or ''}"


def _redacted(text: str) -> str:
    """The address without any ``user:password@`` part, for error messages."""
    return re.sub(r"^([A-Za-z0-9+.-]+://)[^/@]*@", r"\1<credentials removed>@", text.strip())


def parse_bmc_address(text: str) -> BmcAddress:
    """Parse ``text`` into a :class:`BmcAddress`; raise :class:`ConfigError` saying what is wrong."""
    raw = text.strip()
    shown = _redacted(raw)
    if "://" not in raw:
        raise ConfigError(f"BMC address {shown!r} has no scheme; expected {SUPPORTED_FORMS}")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise ConfigError(
            f"BMC address {shown!r} contains credentials; pass them separately (password file or env)"
        )
    if scheme not in _REDFISH_SCHEMES and scheme != "ipmi":
        raise ConfigError(f"BMC address {shown!r}: unsupported scheme {scheme!r}; expected {SUPPORTED_FORMS}")
    if parts.query or parts.fragment:
        raise ConfigError(f"BMC address {shown!r} must not have a query or fragment")
    host = parts.hostname
    if not host:
        raise ConfigError(f"BMC address {shown!r} has no host")
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise ConfigError(f"BMC address {shown!r} has an invalid port") from exc
    if explicit_port == 0:
        raise ConfigError(f"BMC address {shown!r} has an invalid port")

    if scheme == "ipmi":
        if parts.path not in ("", "/"):
            raise ConfigError(f"IPMI address {shown!r} must not have a path (use ipmi://host[:port])")
        return BmcAddress("ipmi", host, explicit_port or _DEFAULT_PORTS["ipmi"])

    http_scheme = _REDFISH_SCHEMES[scheme]
    path = parts.path.rstrip("/")
    system_path: str | None = None
    if path:
        if not _SYSTEM_PATH.match(path):
            raise ConfigError(
                f"Redfish address {shown!r}: the path must name a system, e.g. /redfish/v1/Systems/1"
            )
        system_path = path
    return BmcAddress("redfish", host, explicit_port or _DEFAULT_PORTS[http_scheme], http_scheme, system_path)
