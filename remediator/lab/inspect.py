"""Reading a running lab: its daemon's view and the cluster's view of its nodes."""

from __future__ import annotations

import time
from typing import Any

from kubernetes import client

from remediator import kube
from remediator.errors import ConfigError, LabError
from remediator.lab import client as lab_client
from remediator.lab.state import LabPaths


def core_api(paths: LabPaths) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client(paths.kubeconfig))


def lab_report(paths: LabPaths) -> dict[str, Any]:
    """Everything `lab status` shows, as one JSON-ready dict."""
    if not lab_client.is_running(paths):
        return {"running": False, "stateDir": str(paths.root)}
    reply = lab_client.request(paths, {"command": "status"})
    lab = reply["lab"]
    failures = {h["name"]: h.get("failure") for h in lab.get("hosts", [])}
    nodes = []
    if lab.get("status") == "ready":
        for node in core_api(paths).list_node().items:
            name = kube.node_name(node)
            nodes.append(
                {
                    "name": name,
                    "ready": kube.node_ready_status(node) or "-",
                    "taints": [f"{key}:{effect}" for key, effect in kube.node_taints(node)],
                    "systemUUID": kube.node_system_uuid(node),
                    "failure": failures.get(name),
                }
            )
    return {
        "running": True,
        "stateDir": str(paths.root),
        "lab": lab,
        "processes": reply["processes"],
        "nodes": nodes,
        "vmHosts": vm_hosts(lab),
    }


def vm_hosts(lab: dict[str, Any]) -> list[dict[str, Any]]:
    """Per host: its libvirt URI and its domains, read live from that libvirt (None while it is off)."""
    hosts = []
    for host in lab.get("hosts", []):
        vmcore = host.get("vmcore")
        if not isinstance(vmcore, dict) or not vmcore.get("libvirtUri"):
            continue
        uri = str(vmcore["libvirtUri"])
        hosts.append({"name": host["name"], "libvirtUri": uri, "domains": libvirt_domains(uri)})
    return hosts


def libvirt_domains(uri: str) -> list[dict[str, str]] | None:
    """Every domain of one libvirt (name, UUID, state); None when it does not answer."""
    import contextlib

    import libvirt

    from vmcore.virt import STATE_NAMES

    # libvirt prints its errors to stderr by default; a host that is off is not an error here.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return None
    try:
        return sorted(
            (
                {"name": d.name(), "uuid": d.UUIDString(), "state": STATE_NAMES.get(d.state()[0], "nostate")}
                for d in conn.listAllDomains(0)
            ),
            key=lambda d: d["name"],
        )
    except libvirt.libvirtError:
        return None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def wait_node_ready(paths: LabPaths, node: str, timeout: float) -> float:
    """Wait until ``node`` reports Ready=True; returns the seconds waited."""
    core = core_api(paths)
    started = time.monotonic()
    while kube.node_ready_status(core.read_node(node)) != "True":
        if time.monotonic() - started > timeout:
            raise LabError(f"wait for {node}", f"not Ready after {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - started


def host_bmc(paths: LabPaths, host: str) -> dict[str, Any]:
    """A host's BMC endpoints and the lab's BMC credentials (the lab's own, shown on purpose)."""
    import json
    from urllib.parse import urlsplit

    reply = lab_client.request(paths, {"command": "status"})
    hosts = {h["name"]: h for h in reply["lab"].get("hosts", [])}
    if host not in hosts:
        raise ConfigError(f"unknown host {host!r} (hosts: {', '.join(hosts) or 'none'})")
    entry = hosts[host]
    redfish = entry["bmc"]["redfish"]
    parts = urlsplit(redfish)
    credentials = json.loads((paths.root / "bmc" / "credentials.json").read_text())
    return {
        "host": host,
        "systemUUID": entry["systemUUID"],
        "power": entry["power"],
        "redfish": {
            "address": redfish,
            "url": f"https://{parts.netloc}{parts.path}",
            "port": parts.port,
            "systemPath": parts.path,
        },
        "ipmi": {"address": entry["bmc"]["ipmi"], "cipherSuite": 3},
        "username": credentials["username"],
        "password": credentials["password"],
        "caFile": str(paths.root / "bmc" / "ca.crt"),
    }
