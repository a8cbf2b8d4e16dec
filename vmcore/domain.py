"""The libvirt domain XML of a VM, built from its spec (pure: no libvirt import).

Guests are small and headless: no graphics, no USB, no balloon, a null serial console; KVM when the
node's /dev/kvm works, else TCG (``virt_type`` "kvm" or "qemu"). The domain's name is
``NAMESPACE_NAME`` and its UUID the VirtualMachine's uid, the same on every node, so a VM that runs on
two hosts at once is visible as the same domain in both hosts' libvirt.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from vmcore.api import DomainSpec
from vmcore.errors import VmSpecError

METADATA_NS = "https://vmcore.remediator.io/v1alpha1"
EMULATOR = "/usr/bin/qemu-system-x86_64"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def build_domain_xml(  # noqa: PLR0915 - one flat document
    domain: DomainSpec, virt_type: str, disk_paths: Mapping[str, str] | None = None
) -> str:
    """The ``<domain>`` document for ``domain``.

    ``disk_paths`` maps each disk's name to the file the handler resolved (and checked) for it;
    every disk of the spec must be in it.
    """
    if virt_type not in ("kvm", "qemu"):
        raise VmSpecError(f"virt type {virt_type!r} is not kvm or qemu")
    spec = domain.spec
    paths = dict(disk_paths or {})
    root = ET.Element("domain", {"type": virt_type})
    _sub(root, "name", domain.domain_name)
    _sub(root, "uuid", domain.uid)
    _sub(root, "title", f"vmcore VM {domain.namespace}/{domain.name}")
    metadata = _sub(root, "metadata")
    vm = ET.SubElement(metadata, f"{{{METADATA_NS}}}vm", {"namespace": domain.namespace, "name": domain.name})
    vm.text = domain.uid
    _sub(root, "memory", str(spec.memory_mib), unit="MiB")
    _sub(root, "vcpu", str(spec.cpu_cores))
    os_ = _sub(root, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="pc")
    if spec.disks:
        _sub(os_, "boot", dev="hd")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    devices = _sub(root, "devices")
    _sub(devices, "emulator", EMULATOR)
    for index, disk in enumerate(spec.disks):
        path = paths.get(disk.name)
        if not path:
            raise VmSpecError(f"disk {disk.name}: no resolved path")
        element = _sub(devices, "disk", type="file", device="disk")
        _sub(element, "driver", name="qemu", type=disk.image_format, cache="none")
        _sub(element, "source", file=path)
        _sub(element, "target", dev=f"vd{chr(ord('a') + index)}", bus="virtio")
        if disk.read_only:
            _sub(element, "readonly")
    for iface in spec.interfaces:
        if iface.network == "pod":
            element = _sub(devices, "interface", type="user")  # NAT behind the node: masquerade
        else:
            element = _sub(devices, "interface", type="bridge")
            _sub(element, "source", bridge=iface.network)
        if iface.mac_address:
            _sub(element, "mac", address=iface.mac_address)
        _sub(element, "model", type=iface.model)
        _sub(element, "alias", name=f"ua-{iface.name}")
    for device in spec.host_devices:
        pci_domain, bus, slot_function = device.pci_address.split(":")
        slot, function = slot_function.split(".")
        element = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        source = _sub(element, "source")
        _sub(
            source,
            "address",
            domain=f"0x{pci_domain}",
            bus=f"0x{bus}",
            slot=f"0x{slot}",
            function=f"0x{function}",
        )
    serial = _sub(devices, "serial", type="null")
    _sub(serial, "target", port="0")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    ET.register_namespace("vmcore", METADATA_NS)
    return ET.tostring(root, encoding="unicode")
