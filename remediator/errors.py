"""The project's one error tree.

Every error the project raises on purpose derives from :class:`RemediatorError`. Vendor exceptions
(sushy, pyghmi, libvirt, kubernetes) are wrapped where they are caught, inside the module that talks
to that vendor, with ``raise ... from exc``. Messages never contain credentials.
"""

from __future__ import annotations


class RemediatorError(Exception):
    """Base of every error raised by remediator and vmcore."""


class ConfigError(RemediatorError):
    """Invalid settings, arguments or resource specs."""


# --- lab and tooling -------------------------------------------------------------------------


class LabError(RemediatorError):
    """A lab step failed. ``step`` names it; ``log_path`` points at the log that says why."""

    def __init__(self, step: str, message: str, log_path: str | None = None) -> None:
        self.step = step
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{step}: {message}{where}")


class LabNotRunning(LabError):
    """A command needs a running lab and there is none."""

    def __init__(self, state_dir: str) -> None:
        super().__init__("lab", f"no lab is running in {state_dir}; start one with `remediator lab up`")


class BinaryBuildError(LabError):
    """A pinned upstream binary could not be found or built."""


# --- fencing ---------------------------------------------------------------------------------


class FenceError(RemediatorError):
    """Base of everything that can go wrong while reading or changing a host's power."""

    #: Whether trying the same call again may succeed (a timeout may; a wrong password will not).
    retryable: bool = False


class BmcUnreachable(FenceError):
    """The BMC or machine API did not answer: connection refused, no route, DNS failure."""

    retryable = True


class BmcAuthenticationFailed(FenceError):
    """The BMC rejected the credentials."""


class BmcTimeout(FenceError):
    """The BMC did not answer within the configured timeout."""

    retryable = True


class BmcProtocolError(FenceError):
    """The BMC answered, but with garbage, an unexpected status or a document we cannot read."""

    retryable = True


class BmcTlsError(FenceError):
    """The BMC's TLS certificate is not trusted (or TLS failed before any request was made)."""


class ActionNotSupported(FenceError):
    """The BMC does not allow the requested action (e.g. a reset type missing from its allowed values)."""


class IdentityMismatch(FenceError):
    """The BMC reports a different system than the node it is supposed to fence."""


class PowerStateNotReached(FenceError):
    """The action was accepted but the target power state was not read back before the deadline."""

    retryable = True
