"""IPMI 2.0 (lanplus) fence driver, built on ``pyghmi``.

One :class:`IpmiDriver` drives one BMC through a ``pyghmi.ipmi.command.Command``. pyghmi keeps the
RMCP+ session open (and alive) between calls, so reading the power state over an open session costs
one UDP round trip. Power is read and changed with the standard chassis commands (Get Chassis Status,
Chassis Control) -- what ipmitool and ``fence_ipmilan`` send -- and identity comes from Get System
GUID.

Timeouts: pyghmi retries on its own schedule and can take tens of seconds to give up on a dead BMC.
Every call therefore runs on a short-lived worker thread and the caller waits at most ``timeout``
seconds; on expiry the session is marked broken (so the next call logs in afresh) and
:class:`BmcTimeout` is raised.

SHA-1 BMCs (``legacy_sha1``): pyghmi's client proposes RAKP-HMAC-SHA256 and only falls back to SHA-1
when the BMC *rejects* that proposal. Some BMCs -- every pyghmi-based server, virtualbmc included --
accept the proposal but then answer with SHA-1 codes, and the client fails with ``struct.error: pack
expected 32 items``. ``legacy_sha1=True`` makes this driver's session propose RAKP-HMAC-SHA1 /
HMAC-SHA1-96 / AES-CBC-128 (cipher suite 3) from the start. It is per session: a subclass of pyghmi's
``Session`` that overrides only the initial hash choice; nothing global is patched. pyghmi shares a
logged-in session between ``Command`` objects for the same BMC and credentials, so the driver logs that
session in first and then checks that the ``Command`` it builds really uses it.
"""

from __future__ import annotations

import logging
import struct
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as ipmi_command
from pyghmi.ipmi.private import session as ipmi_session

from remediator.errors import (
    ActionNotSupported,
    BmcAuthenticationFailed,
    BmcProtocolError,
    BmcTimeout,
    BmcUnreachable,
    ConfigError,
    FenceError,
)
from remediator.fencing.address import BmcAddress
from remediator.fencing.base import DEFAULT_CALL_TIMEOUT, Credentials, Identity, PowerState

log = logging.getLogger(__name__)

T = TypeVar("T")

# IPMI network functions and commands (IPMI 2.0 spec, tables G-1).
_NETFN_CHASSIS = 0x00
_NETFN_APP = 0x06
_CMD_GET_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02
_CMD_GET_SYSTEM_GUID = 0x37
_CONTROL_POWER_DOWN = 0x00
_CONTROL_POWER_UP = 0x01
_CONTROL_HARD_RESET = 0x03
#: Completion codes that mean "this BMC does not do that".
_UNSUPPORTED_CODES = {0xC1: "invalid command", 0xCC: "invalid data field", 0xD5: "not supported now"}

_AUTH_MARKERS = ("password", "unauthorized name", "invalid user", "unauthorized", "privilege")
_UNREACHABLE_MARKERS = ("timeout", "no longer connected", "failed to initialize", "unreachable")


class _Sha1Session(ipmi_session.Session):  # type: ignore[misc]
    """A pyghmi client session that proposes SHA-1 authentication/integrity from the first message."""

    def _initsession(self) -> None:
        super()._initsession()
        # pyghmi reads this in _open_rmcpplus_request: 1 = RAKP-HMAC-SHA1 / HMAC-SHA1-96, 256 = SHA-256.
        self.attemptedhash = 1


class IpmiDriver:
    """A :class:`~remediator.fencing.base.PowerDriver` for one IPMI 2.0 BMC."""

    def __init__(
        self,
        address: BmcAddress,
        credentials: Credentials,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        legacy_sha1: bool = False,
        privilege_level: int | None = None,
    ) -> None:
        if address.protocol != "ipmi":
            raise ConfigError(f"{address} is not an IPMI address")
        if timeout <= 0:
            raise ConfigError("the IPMI call timeout must be positive")
        if len(credentials.username.encode()) > 16:
            raise ConfigError("IPMI user names are at most 16 bytes long")
        self.address = address
        self._credentials = credentials
        self._timeout = timeout
        self._legacy_sha1 = legacy_sha1
        self._privilege_level = privilege_level
        self._command: Any = None
        self._opening: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"ipmi {self.address}"

    def describe(self) -> str:
        integrity = "SHA-1 (legacy_sha1)" if self._legacy_sha1 else "SHA-256, SHA-1 if refused"
        return f"{self.name} (lanplus, {integrity}, timeout {self._timeout:g}s)"

    def __repr__(self) -> str:
        return f"IpmiDriver({self.describe()})"

    # --- running pyghmi calls with a deadline ---------------------------------------------------

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a worker thread, wait at most the timeout, translate pyghmi's errors."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # handed to the calling thread below
                box["error"] = exc

        worker = threading.Thread(target=target, name=f"ipmi-{self.address.host}", daemon=True)
        worker.start()
        worker.join(self._timeout)
        if worker.is_alive():
            self._abandon_session()
            raise BmcTimeout(f"{self.name}: {what}: no answer within {self._timeout:g}s")
        if "error" in box:
            raise self._translate(what, box["error"]) from box["error"]
        return box["value"]  # type: ignore[no-any-return]

    def _translate(self, what: str, exc: BaseException) -> BaseException:  # noqa: PLR0911 - one branch per kind
        if isinstance(exc, FenceError | ConfigError):
            return exc
        if isinstance(exc, struct.error):
            self._abandon_session()
            hint = (
                ""
                if self._legacy_sha1
                else "; if this BMC only speaks SHA-1 (e.g. virtualbmc), enable legacy_sha1"
            )
            return BmcProtocolError(f"{self.name}: {what}: session negotiation failed{hint}")
        if isinstance(exc, pyghmi_exc.IpmiException | OSError):
            self._abandon_session()
            text = str(exc).lower()
            if any(m in text for m in _AUTH_MARKERS):
                return BmcAuthenticationFailed(f"{self.name}: {what}: the BMC rejected the credentials")
            if any(m in text for m in _UNREACHABLE_MARKERS) or isinstance(exc, OSError):
                return BmcUnreachable(f"{self.name}: {what}: no IPMI session ({str(exc)[:200]})")
            return BmcProtocolError(f"{self.name}: {what}: {str(exc)[:200]}")
        if isinstance(exc, Exception):
            self._abandon_session()
            return BmcProtocolError(f"{self.name}: {what}: unexpected {type(exc).__name__}")
        return exc

    def _abandon_session(self) -> None:
        """Mark our session broken: pyghmi then stops keepalives/retries and never hands it out again.

        This matters beyond this driver: pyghmi runs one event loop for all sessions of the process, so
        a half-open session left behind raises its errors in whichever thread polls next.
        """
        cmd, self._command = self._command, None
        opening, self._opening = self._opening, None
        for sess in (cmd.ipmi_session if cmd is not None else None, opening):
            if sess is not None and hasattr(sess, "socket") and not sess.broken:
                # Not logged in any more, as far as pyghmi is concerned: _mark_broken then skips the
                # close-session request, which would first wait for the very command that hangs.
                sess.logged = 0
                sess._mark_broken("abandoned by remediator")

    # --- the session ---------------------------------------------------------------------------

    def _open(self) -> Any:
        creds = self._credentials
        # Bytes, not str: pyghmi files sessions under the arguments as given but later compares and
        # removes them using its bytes copies, so str credentials make a second Command for the same
        # BMC wait forever on a stale "logging in" entry.
        kwargs: dict[str, Any] = {
            "bmc": self.address.host,
            "userid": creds.username.encode(),
            "password": creds.password.encode(),
            "port": self.address.port,
            "privlevel": self._privilege_level,
        }
        session_class = _Sha1Session if self._legacy_sha1 else ipmi_session.Session
        # Two steps so that we hold the session even when logging in fails, and can retire it.
        sess = session_class.__new__(session_class, **kwargs)
        self._opening = sess
        sess.__init__(**kwargs)
        # pyghmi shares a logged-in session between Commands with the same BMC and credentials:
        # the Command built now must pick up the session we just opened (with our hash choice).
        cmd = ipmi_command.Command(**kwargs)
        if cmd.ipmi_session is not sess:
            cmd.ipmi_session._mark_broken("replaced")
            raise BmcProtocolError(f"{self.name}: pyghmi did not reuse the session just opened")
        self._opening = None
        return cmd

    def _cmd(self) -> Any:
        with self._lock:
            cmd = self._command
            if cmd is not None and cmd.ipmi_session.broken:
                self._command = cmd = None
        if cmd is None:
            cmd = self._run("open session", self._open)
            with self._lock:
                self._command = cmd
        return cmd

    def _raw(self, what: str, netfn: int, command: int, data: tuple[int, ...] = ()) -> list[int]:
        cmd = self._cmd()
        rsp: dict[str, Any] = self._run(
            what, lambda: cmd.raw_command(netfn=netfn, command=command, data=data)
        )
        code = int(rsp.get("code", 0) or 0)
        if code in _UNSUPPORTED_CODES:
            raise ActionNotSupported(
                f"{self.name}: {what}: the BMC answered {_UNSUPPORTED_CODES[code]} (0x{code:02x})"
            )
        if "error" in rsp or code:
            err = str(rsp.get("error", "error"))
            if "timeout" in err.lower():
                self._abandon_session()
                raise BmcTimeout(f"{self.name}: {what}: no answer within {self._timeout:g}s")
            raise BmcProtocolError(f"{self.name}: {what}: completion code 0x{code:02x} ({err[:120]})")
        return list(rsp.get("data", []))

    def close(self) -> None:
        with self._lock:
            cmd, self._command = self._command, None
        if cmd is None:
            return
        sess = cmd.ipmi_session
        if sess.broken:
            return
        try:
            self._run("logout", sess.logout)
        except FenceError as exc:
            log.debug("%s: logout failed: %s", self.name, exc)
        finally:
            sess._mark_broken("closed")

    def __enter__(self) -> IpmiDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- PowerDriver ---------------------------------------------------------------------------

    def power_state(self) -> PowerState:
        data = self._raw("read power state", _NETFN_CHASSIS, _CMD_GET_CHASSIS_STATUS)
        if not data:
            return PowerState.UNKNOWN
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    def power_off(self) -> None:
        self._raw("power off", _NETFN_CHASSIS, _CMD_CHASSIS_CONTROL, (_CONTROL_POWER_DOWN,))

    def power_on(self) -> None:
        self._raw("power on", _NETFN_CHASSIS, _CMD_CHASSIS_CONTROL, (_CONTROL_POWER_UP,))

    def hard_reset(self) -> None:
        self._raw("hard reset", _NETFN_CHASSIS, _CMD_CHASSIS_CONTROL, (_CONTROL_HARD_RESET,))

    def identity(self) -> Identity:
        try:
            data = self._raw("read system GUID", _NETFN_APP, _CMD_GET_SYSTEM_GUID)
        except ActionNotSupported:
            return Identity()
        if len(data) != 16:
            return Identity()
        # IPMI sends the GUID in SMBIOS wire order: the first three fields little-endian.
        return Identity(system_uuid=str(uuid.UUID(bytes_le=bytes(data))))
