"""The one interface every fence driver implements, and the small value types it speaks in.

A driver reads and changes one host's power through one management endpoint (a Redfish system,
an IPMI BMC, ...). It only *sends* commands; proving that the host reached a state is the job of
:mod:`remediator.fencing.verify`, which reads the state back through the same interface.

Nothing here talks to a network. Drivers never put credentials into names, descriptions, logs or
exception messages; :class:`Credentials` hides the password from ``repr`` as a second line of defence.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

#: Seconds any single driver call (one request and its answer) may take unless configured otherwise.
DEFAULT_CALL_TIMEOUT = 10.0


class PowerState(enum.Enum):
    """A host's power as read from its BMC. ``UNKNOWN`` (unreadable, transitional, garbage) is never off."""

    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Credentials:
    """A BMC user name and password. The password never shows in ``repr`` or ``str``."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"

    __str__ = __repr__


def normalize_uuid(value: str | None) -> str | None:
    """A canonical lower-case UUID string, or ``None`` for an empty/absent value.

    Accepts the usual spellings (upper case, braces, ``urn:uuid:`` prefix, no dashes). A value that is
    not a UUID at all is kept (stripped, lower-cased) so that it can still be compared and reported.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text.lower()


@dataclass(frozen=True)
class Identity:
    """What a BMC says about the system it controls. Either field may be unknown (``None``)."""

    system_uuid: str | None = None
    serial: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "system_uuid", normalize_uuid(self.system_uuid))
        serial = self.serial.strip() if self.serial else None
        object.__setattr__(self, "serial", serial or None)

    def uuid_matches(self, expected: str | None) -> bool | None:
        """``True``/``False`` when both UUIDs are known, ``None`` when either is not."""
        want = normalize_uuid(expected)
        if want is None or self.system_uuid is None:
            return None
        return want == self.system_uuid


@runtime_checkable
class PowerDriver(Protocol):
    """Reads and changes one host's power. Every call is bounded by the driver's configured timeout.

    ``power_off``/``power_on`` return as soon as the BMC accepted the command; they prove nothing.
    Errors are :class:`remediator.errors.FenceError` subclasses (or ``ConfigError`` for a setting
    that can never work).
    """

    @property
    def name(self) -> str:
        """Short label for logs and messages, e.g. ``redfish https://10.0.0.5/redfish/v1/Systems/1``."""
        ...

    def describe(self) -> str:
        """One line with the endpoint and the security settings in use (never credentials)."""
        ...

    def power_state(self) -> PowerState: ...

    def power_off(self) -> None:
        """Send a hard (immediate) power-off. Does not wait."""
        ...

    def power_on(self) -> None:
        """Send a power-on. Does not wait."""
        ...

    def identity(self) -> Identity: ...

    def close(self) -> None:
        """Release the connection/session. The driver may reconnect on its next call."""
        ...
