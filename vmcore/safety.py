"""The no-double-run check: read every host's libvirt and report any VM running on two hosts at once.

Used by the tests and the lab. Reads only. A domain counts as running in state ``running``; a
migration's incoming (paused) side does not. Hosts are read one after another, so a hand-over that
happens between two reads could look like a double run: a suspected double is read again (both
hosts) and reported only if it is still there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import libvirt

# libvirt prints every error to stderr unless a handler is registered; a host that is off (its
# socket refuses connections) is an expected answer here, reported as None below.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@dataclass(frozen=True)
class DoubleRun:
    domain: str
    hosts: tuple[str, ...]


def running_domains(uri: str) -> set[str] | None:
    """Names of the running domains of one libvirt; None when it does not answer (host off)."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return None
    try:
        return {
            d.name()
            for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            if d.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        }
    except libvirt.libvirtError:
        return None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _doubles(hosts: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    seen: dict[str, list[str]] = {}
    for host, uri in sorted(hosts.items()):
        for name in running_domains(uri) or set():
            seen.setdefault(name, []).append(host)
    return {name: tuple(where) for name, where in seen.items() if len(where) > 1}


def check(hosts: Mapping[str, str]) -> list[DoubleRun]:
    """Every domain running on more than one of ``hosts`` (host name -> libvirt URI), confirmed."""
    suspects = _doubles(hosts)
    if not suspects:
        return []
    confirmed = _doubles({h: hosts[h] for where in suspects.values() for h in where})
    return [DoubleRun(name, where) for name, where in sorted(confirmed.items()) if name in suspects]
