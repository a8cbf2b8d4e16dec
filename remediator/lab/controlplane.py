"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler as processes, with generated certificates and an admin kubeconfig.

Used by the lab daemon (``remediator.lab.daemon``); each ``start_*`` step waits for the component to
be healthy within a deadline and raises :class:`~remediator.errors.LabError` naming the step and the
log file when it exits or does not become healthy.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from remediator.errors import LabError
from remediator.lab.pki import CertificateAuthority, KeyPair, generate_private_key_pem, public_key_pem
from remediator.lab.procs import ManagedProcess, Supervisor
from remediator.lab.state import LabPaths
from remediator.lab.timers import LabTimers

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "remediator-lab-admin"

#: Component -> port names it needs.
PORT_NAMES = ("etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def wait_until(
    check: Callable[[], bool],
    *,
    step: str,
    timeout: float,
    proc: ManagedProcess | None = None,
    interval: float = 0.1,
) -> float:
    """Poll ``check`` until it is true; fail fast when ``proc`` exits. Returns the seconds waited."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if proc is not None and not proc.alive():
            raise LabError(step, proc.exit_summary(), str(proc.log_path))
        if check():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            log_path = str(proc.log_path) if proc else None
            raise LabError(step, f"not ready after {timeout:.0f}s", log_path)
        time.sleep(interval)


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, client: KeyPair, user: str) -> None:
    """A kubeconfig with the CA and the client certificate embedded."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "remediator-lab",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(client.cert_pem),
                    "client-key-data": b64(client.key_pem),
                },
            }
        ],
        "contexts": [{"name": "remediator-lab", "context": {"cluster": "remediator-lab", "user": user}}],
        "current-context": "remediator-lab",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@dataclass
class ControlPlane:
    """The four control-plane processes of one lab and the files they share."""

    paths: LabPaths
    supervisor: Supervisor
    binaries: dict[str, Path]
    timers: LabTimers
    ports: dict[str, int] = field(default_factory=dict)
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    ca: CertificateAuthority | None = None

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.ports['apiserver']}"

    # --- certificates and kubeconfigs -----------------------------------------------------------

    def generate_pki(self) -> None:
        pki = self.paths.pki
        ca = CertificateAuthority.create("remediator-lab-ca")
        ca.write(pki / "ca.crt", pki / "ca.key")
        ca.issue_server(
            "kube-apiserver",
            dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"],
            ip_addresses=[LOOPBACK, "10.96.0.1"],
        ).write(pki / "apiserver.crt", pki / "apiserver.key")
        for component in ("controller-manager", "scheduler"):
            ca.issue_server(f"kube-{component}").write(pki / f"{component}.crt", pki / f"{component}.key")
        sa_key = generate_private_key_pem()
        (pki / "sa.key").write_bytes(sa_key)
        (pki / "sa.key").chmod(0o600)
        (pki / "sa.pub").write_bytes(public_key_pem(sa_key))
        self.ca = ca

    def write_kubeconfigs(self) -> None:
        assert self.ca is not None
        ca_pem = self.ca.cert_pem
        write_kubeconfig(
            self.paths.kubeconfig,
            self.server,
            ca_pem,
            self.ca.issue_client(ADMIN_USER, ["system:masters"]),
            ADMIN_USER,
        )
        for component, user in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ):
            write_kubeconfig(
                self.paths.kubeconfigs / f"{component}.kubeconfig",
                self.server,
                ca_pem,
                self.ca.issue_client(user),
                user,
            )

    def user_kubeconfig(self, name: str, user: str, groups: list[str]) -> Path:
        """A kubeconfig for a client certificate with the given user name and groups."""
        assert self.ca is not None
        path = self.paths.kubeconfigs / f"{name}.kubeconfig"
        write_kubeconfig(path, self.server, self.ca.cert_pem, self.ca.issue_client(user, groups), user)
        return path

    # --- processes ------------------------------------------------------------------------------

    def allocate_ports(self) -> None:
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))

    def start_etcd(self, timeout: float = 30.0) -> float:
        client = f"http://{LOOPBACK}:{self.ports['etcd-client']}"
        peer = f"http://{LOOPBACK}:{self.ports['etcd-peer']}"
        argv = [
            str(self.binaries["etcd"]),
            "--name=lab",
            f"--data-dir={self.paths.etcd_data}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=lab={peer}",
            "--initial-cluster-state=new",
            # A throw-away lab database: durability on power loss is not worth the fsync latency.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        proc = self._spawn("etcd", argv)
        return wait_until(
            lambda: _http_ok(LOOPBACK, self.ports["etcd-client"], "/health", None),
            step="start etcd",
            timeout=timeout,
            proc=proc,
        )

    def start_apiserver(self, timeout: float = 60.0) -> float:
        pki = self.paths.pki
        argv = [
            str(self.binaries["kube-apiserver"]),
            f"--etcd-servers=http://{LOOPBACK}:{self.ports['etcd-client']}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            # The lab's apiserver is only reachable on loopback; there is no in-cluster Service
            # endpoint to maintain for it.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--event-ttl=1h",
            *self.timers.apiserver_flags(),
        ]
        proc = self._spawn("kube-apiserver", argv)
        context = self.admin_ssl_context()
        return wait_until(
            lambda: _http_ok(LOOPBACK, self.ports["apiserver"], "/readyz", context),
            step="start kube-apiserver",
            timeout=timeout,
            proc=proc,
            interval=0.2,
        )

    def start_controller_manager(self, timeout: float = 60.0) -> float:
        pki = self.paths.pki
        kubeconfig = self.paths.kubeconfigs / "controller-manager.kubeconfig"
        argv = [
            str(self.binaries["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports['controller-manager']}",
            f"--tls-cert-file={pki / 'controller-manager.crt'}",
            f"--tls-private-key-file={pki / 'controller-manager.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--controllers=*",
            "--profiling=false",
            *self.timers.controller_manager_flags(),
        ]
        proc = self._spawn("kube-controller-manager", argv)
        return wait_until(
            lambda: _http_ok(LOOPBACK, self.ports["controller-manager"], "/healthz", self.ca_ssl_context()),
            step="start kube-controller-manager",
            timeout=timeout,
            proc=proc,
            interval=0.2,
        )

    def start_scheduler(self, timeout: float = 60.0) -> float:
        pki = self.paths.pki
        kubeconfig = self.paths.kubeconfigs / "scheduler.kubeconfig"
        argv = [
            str(self.binaries["kube-scheduler"]),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={self.ports['scheduler']}",
            f"--tls-cert-file={pki / 'scheduler.crt'}",
            f"--tls-private-key-file={pki / 'scheduler.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        proc = self._spawn("kube-scheduler", argv)
        return wait_until(
            lambda: _http_ok(LOOPBACK, self.ports["scheduler"], "/healthz", self.ca_ssl_context()),
            step="start kube-scheduler",
            timeout=timeout,
            proc=proc,
            interval=0.2,
        )

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = self.supervisor.spawn(name, argv, self.paths.log(name))
        self.processes[name] = proc
        return proc

    # --- TLS contexts for health probes ---------------------------------------------------------

    def ca_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.paths.pki / "ca.crt"))

    def admin_ssl_context(self) -> ssl.SSLContext:
        assert self.ca is not None
        context = self.ca_ssl_context()
        admin = self.ca.issue_client(ADMIN_USER, ["system:masters"])
        admin.write(self.paths.pki / "admin.crt", self.paths.pki / "admin.key")
        context.load_cert_chain(self.paths.pki / "admin.crt", self.paths.pki / "admin.key")
        return context


def _http_ok(host: str, port: int, path: str, context: ssl.SSLContext | None) -> bool:
    """True when GET ``path`` answers 200. Any connection problem is 'not yet'."""
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, port, timeout=2)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=2, context=context)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()
