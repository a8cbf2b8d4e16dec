"""vmcore's branch of the project's one error tree (rooted at :class:`RemediatorError`)."""

from __future__ import annotations

from remediator.errors import ConfigError, RemediatorError


class VmError(RemediatorError):
    """Base of everything vmcore raises on purpose."""


class VmSpecError(ConfigError, VmError):
    """A VirtualMachine spec that vmcore cannot run (the CRD rejects most of these first)."""


class UnsafePath(VmSpecError):
    """A disk path that is relative, contains '..', or goes through a symlink: refused by the handler."""


class HypervisorError(VmError):
    """libvirt refused or failed an operation (wrapped where libvirt is called)."""


class MigrationFailed(HypervisorError):
    """A live migration did not complete; the domain keeps running on the source."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {message}")
