"""Redfish fence driver, built on ``sushy``.

One :class:`RedfishDriver` drives one ComputerSystem. It keeps one sushy root (and so one
``requests`` session with a kept-alive TLS connection) open across calls, so that a ForceOff
followed by a read-back loop costs one request per read. Every request has connect and read
timeouts; sushy's own retry/sleep loops are reduced to a single attempt because the caller
(:mod:`remediator.fencing.verify`) owns retrying.

Security: TLS is verified by default (system trust store, or ``ca_file``); skipping verification
needs an explicit ``insecure=True``. Authentication is HTTP basic by default; ``auth="session"`` uses a
Redfish session (X-Auth-Token), ``auth="auto"`` tries a session and falls back to basic.

All sushy/requests exceptions are translated here into :mod:`remediator.errors` types.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import requests
import sushy
from sushy import auth as sushy_auth
from sushy import connector as sushy_connector
from sushy import exceptions as sushy_exc

from remediator.errors import (
    ActionNotSupported,
    BmcAuthenticationFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcTlsError,
    BmcUnreachable,
    ConfigError,
    FenceError,
)
from remediator.fencing.address import BmcAddress
from remediator.fencing.base import DEFAULT_CALL_TIMEOUT, Credentials, Identity, PowerState

log = logging.getLogger(__name__)

AuthMode = Literal["basic", "session", "auto"]

_POWER_STATES = {
    sushy.PowerState.ON: PowerState.ON,
    sushy.PowerState.OFF: PowerState.OFF,
}

#: Reset types this driver sends, by the name used in messages.
FORCE_OFF = "ForceOff"
ON = "On"
FORCE_RESTART = "ForceRestart"
GRACEFUL_SHUTDOWN = "GracefulShutdown"


def _cause_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class _KeepAliveConnector(sushy_connector.Connector):  # type: ignore[misc]
    """sushy's connector without its ``Connection: close`` default.

    sushy asks the BMC to close the connection after every request (a workaround for BMCs that choke
    on long-lived connections). That costs a TCP and TLS handshake per read, and races with servers
    that close without saying so. Fencing polls the state several times within a second: keep the
    connection. (If a BMC drops it anyway, requests reconnects.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session.headers.pop("Connection", None)


class RedfishDriver:
    """A :class:`~remediator.fencing.base.PowerDriver` for one Redfish ComputerSystem."""

    def __init__(
        self,
        address: BmcAddress,
        credentials: Credentials,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        connect_timeout: float | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        auth: AuthMode = "basic",
    ) -> None:
        if address.protocol != "redfish":
            raise ConfigError(f"{address} is not a Redfish address")
        if insecure and ca_file:
            raise ConfigError("give either a CA file or insecure=True, not both")
        if timeout <= 0:
            raise ConfigError("the Redfish call timeout must be positive")
        if auth not in ("basic", "session", "auto"):
            raise ConfigError(f"unknown Redfish auth mode {auth!r}; expected basic, session or auto")
        self.address = address
        self._credentials = credentials
        self._timeout = timeout
        self._connect_timeout = min(connect_timeout or timeout, timeout)
        self._ca_file = ca_file
        self._insecure = insecure
        self._auth_mode: AuthMode = auth
        self._root: sushy.Sushy | None = None
        self._system: Any = None
        self._allowed_resets: frozenset[str] | None = None

    # --- description ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"redfish {self.address}"

    def describe(self) -> str:
        if self.address.scheme == "http":
            tls = "plain HTTP (no TLS)"
        elif self._insecure:
            tls = "TLS NOT verified (insecure)"
        elif self._ca_file:
            tls = f"TLS verified against {self._ca_file}"
        else:
            tls = "TLS verified against the system trust store"
        return f"{self.name} ({self._auth_mode} auth, {tls}, timeout {self._timeout:g}s)"

    def __repr__(self) -> str:
        return f"RedfishDriver({self.describe()})"

    # --- connection ----------------------------------------------------------------------------

    @property
    def _verify(self) -> bool | str:
        if self._ca_file:
            return self._ca_file
        return not self._insecure

    def _make_auth(self) -> sushy_auth.AuthBase:
        user, password = self._credentials.username, self._credentials.password
        if self._auth_mode == "session":
            return sushy_auth.SessionAuth(username=user, password=password)
        if self._auth_mode == "auto":
            return sushy_auth.SessionOrBasicAuth(username=user, password=password)
        return sushy_auth.BasicAuth(username=user, password=password)

    def _connect(self) -> Any:
        if self._system is not None:
            return self._system
        with self._translate("connect"):
            connector = _KeepAliveConnector(
                self.address.base_url,
                verify=self._verify,
                default_request_timeout=self._timeout,
                connect_timeout=self._connect_timeout,
                # sushy's loops retry with multi-second sleeps; verify.py owns retrying instead.
                server_side_retries=1,
                server_side_retries_delay=0,
            )
            root = sushy.Sushy(self.address.base_url, auth=self._make_auth(), connector=connector)
            self._root = root
            path = self.address.system_path or self._discover_system(root)
            try:
                self._system = root.get_system(path)
            except sushy_exc.ResourceNotFoundError as exc:
                raise ConfigError(f"{self.name}: the BMC has no system {path}") from exc
            log.debug("%s: connected", self.name)
            return self._system

    def _discover_system(self, root: sushy.Sushy) -> str:
        members = sorted(root.get_system_collection().members_identities)
        if len(members) == 1:
            return str(members[0])
        if not members:
            raise BmcProtocolError(f"{self.name}: the BMC lists no systems")
        raise ConfigError(
            f"{self.name}: the BMC lists {len(members)} systems ({', '.join(members)}); "
            "put the system path in the address, e.g. redfish://host/redfish/v1/Systems/ID"
        )

    def close(self) -> None:
        root, self._root, self._system, self._allowed_resets = self._root, None, None, None
        if root is None:
            return
        try:
            if root._auth is not None:
                root._auth.close()
        except (sushy_exc.SushyError, requests.RequestException) as exc:
            log.debug("%s: closing the Redfish session failed: %s", self.name, type(exc).__name__)
        finally:
            root._auth = None
            root._conn.close()

    def __enter__(self) -> RedfishDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- error translation ---------------------------------------------------------------------

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except (FenceError, ConfigError):
            raise
        except sushy_exc.AccessError as exc:
            raise BmcAuthenticationFailed(
                f"{self.name}: {what}: the BMC rejected the credentials (HTTP {exc.status_code})"
            ) from exc
        except sushy_exc.HTTPError as exc:
            detail = f": {exc.detail}" if exc.detail else ""
            raise BmcProtocolError(
                f"{self.name}: {what}: unexpected HTTP {exc.status_code}{detail}"[:500]
            ) from exc
        except sushy_exc.ConnectionError as exc:
            raise self._connection_error(what, exc) from exc
        except (requests.exceptions.JSONDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BmcProtocolError(f"{self.name}: {what}: the BMC answered with a non-JSON document") from exc
        except requests.RequestException as exc:
            raise self._connection_error(what, exc) from exc
        except sushy_exc.SushyError as exc:
            raise BmcProtocolError(f"{self.name}: {what}: unreadable Redfish document: {exc}"[:500]) from exc

    def _connection_error(self, what: str, exc: BaseException) -> FenceError:
        for cause in _cause_chain(exc):
            if isinstance(cause, requests.exceptions.SSLError):
                return BmcTlsError(
                    f"{self.name}: {what}: TLS failed (untrusted or invalid certificate?); "
                    "give the BMC's CA with a CA file, or insecure explicitly"
                )
            if isinstance(cause, requests.exceptions.Timeout):
                return BmcTimeout(f"{self.name}: {what}: no answer within {self._timeout:g}s")
            if isinstance(cause, requests.exceptions.ConnectionError):
                return BmcUnreachable(f"{self.name}: {what}: cannot connect ({_short_reason(cause)})")
        return BmcUnreachable(f"{self.name}: {what}: request failed ({type(exc).__name__})")

    # --- PowerDriver ---------------------------------------------------------------------------

    def power_state(self) -> PowerState:
        system = self._connect()
        with self._translate("read power state"):
            system.refresh(force=True)
            state = _POWER_STATES.get(system.power_state, PowerState.UNKNOWN)
        return state

    def allowed_reset_types(self) -> frozenset[str]:
        """The ResetType values the system advertises (all of them if it advertises none)."""
        system = self._connect()
        if self._allowed_resets is None:
            with self._translate("read allowed reset types"):
                try:
                    values = system.get_allowed_reset_system_values()
                except sushy_exc.MissingActionError as exc:
                    raise ActionNotSupported(f"{self.name}: the system has no Reset action") from exc
                self._allowed_resets = frozenset(sushy.ResetType(v).value for v in values)
        return self._allowed_resets

    def reset(self, reset_type: str) -> None:
        """Send ``ComputerSystem.Reset`` with ``reset_type`` after checking it is allowed."""
        allowed = self.allowed_reset_types()
        if reset_type not in allowed:
            raise ActionNotSupported(
                f"{self.name}: the system does not allow ResetType {reset_type} "
                f"(allowed: {', '.join(sorted(allowed)) or 'none'})"
            )
        system = self._connect()
        with self._translate(f"reset {reset_type}"):
            system.reset_system(sushy.ResetType(reset_type))

    def power_off(self) -> None:
        self.reset(FORCE_OFF)

    def power_on(self) -> None:
        self.reset(ON)

    def graceful_shutdown(self) -> None:
        self.reset(GRACEFUL_SHUTDOWN)

    def force_restart(self) -> None:
        self.reset(FORCE_RESTART)

    def identity(self) -> Identity:
        system = self._connect()
        with self._translate("read identity"):
            return Identity(system_uuid=system.uuid, serial=system.serial_number)


def _short_reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "No route to host", "timed out"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
