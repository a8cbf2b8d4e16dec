"""The lab's hardware: one private libvirtd holding a tiny "host domain" per lab host.

A host domain is a 64 MiB diskless qemu guest (KVM when /dev/kvm works, TCG otherwise) that does
nothing but exist: its power *is* the host's power. The lab's BMCs (sushy-emulator over Redfish,
a pyghmi BMC over IPMI) switch it, and so does ``lab fail --mode power-loss``. Lifecycle events
from libvirt (not polling) tell the lab daemon when a host lost or regained power.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from remediator.errors import LabError
from remediator.lab.libvirtd import LabLibvirtd
from remediator.lab.procs import Supervisor
from vmcore.virt import ensure_event_loop, kvm_usable

log = logging.getLogger(__name__)

#: Called with (host name, powered on?) from libvirt's event thread.
PowerListener = Callable[[str, bool], None]

HOST_DOMAIN_XML = """\
<domain type='{virt_type}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <title>remediator lab host {name}</title>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


class Hardware:
    """Host domains in the lab's hardware libvirtd, and their power events."""

    def __init__(self, root: Path, supervisor: Supervisor, listener: PowerListener) -> None:
        self.daemon = LabLibvirtd("hardware", root, supervisor)
        self.listener = listener
        self.virt_type = "kvm" if kvm_usable() else "qemu"
        self._conn: Any = None

    @property
    def uri(self) -> str:
        return self.daemon.uri

    def spawn(self) -> None:
        self.daemon.spawn()

    def connect(self) -> None:
        ensure_event_loop()
        self._conn = self.daemon.connect()
        self._conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )

    def _on_lifecycle(self, _conn: Any, domain: Any, event: int, _detail: int, _opaque: Any) -> None:
        if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            self.listener(domain.name(), True)
        elif event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_CRASHED):
            self.listener(domain.name(), False)

    def add_host(self, name: str, system_uuid: str) -> None:
        """Define the host's domain and power it on."""
        xml = HOST_DOMAIN_XML.format(virt_type=self.virt_type, name=name, uuid=system_uuid)
        try:
            domain = self._conn.defineXML(xml)
            domain.create()
        except libvirt.libvirtError as exc:
            raise LabError(
                f"power on {name}", exc.get_error_message() or str(exc), str(self.daemon.log_path)
            ) from exc

    def is_on(self, name: str) -> bool:
        return bool(self._conn.lookupByName(name).isActive())

    def power(self, name: str, on: bool) -> bool:
        """Switch a host's power behind everybody's back. Returns whether anything changed."""
        domain = self._conn.lookupByName(name)
        if bool(domain.isActive()) == on:
            return False
        if on:
            domain.create()
        else:
            domain.destroy()
        return True

    def stop(self) -> None:
        """Power every host off and stop the daemon (qemu outlives a stopped libvirtd otherwise)."""
        if self._conn is not None:
            try:
                for domain in self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    domain.destroy()
                self._conn.close()
            except libvirt.libvirtError as exc:
                log.warning("powering off host domains at teardown: %s", exc)
            self._conn = None
        self.daemon.stop()
