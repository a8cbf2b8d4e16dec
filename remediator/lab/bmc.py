"""BMC endpoints for tests and the lab: real Redfish and IPMI servers on 127.0.0.1.

* :class:`SushyEmulator` -- runs ``sushy-emulator`` (sushy-tools) as a subprocess: HTTPS with a
  certificate from :mod:`remediator.lab.pki`, basic auth from a bcrypt htpasswd file (cheap cost
  factor), backed by libvirt (``libvirt_uri``, e.g. ``test:///default`` whose state lives inside the
  emulator process, or a lab libvirtd) or by the fake driver (``fake_systems``; it applies power changes
  after a random 1-11 s on purpose: a slow BMC).
* :class:`IpmiBmc` -- runs an IPMI 2.0 BMC built on ``pyghmi.ipmi.bmc.Bmc`` as a subprocess
  (``python -m remediator.lab.bmc ipmi ...``). Its power is a small JSON file (for tests) or a libvirt
  domain. We use our own pyghmi server rather than virtualbmc because it needs no daemon and config
  dir, binds exactly 127.0.0.1 and a kernel-chosen port (reported back, so no port races), and can
  inject faults (a "stuck" BMC that accepts power-off and stays on). Like virtualbmc it only speaks
  SHA-1, so clients need the driver's ``legacy_sha1`` option.
* :class:`ScriptedRedfishBmc` -- a small in-process HTTPS Redfish server whose behaviour is scripted:
  it stands in for *remote devices that misbehave* (stays on after ForceOff, answers garbage or 500,
  restricts ResetType, reports another UUID, lists several systems, offers session auth).

Everything binds 127.0.0.1 only. Passwords reach child processes through the environment, never argv.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

from remediator.errors import LabError
from remediator.lab.controlplane import free_ports
from remediator.lab.pki import CertificateAuthority
from remediator.lab.procs import ManagedProcess, Supervisor

log = logging.getLogger(__name__)

LISTEN_IP = "127.0.0.1"
PASSWORD_ENV = "REMEDIATOR_BMC_PASSWORD"  # noqa: S105 - the name of a variable, not a password


# --- small helpers -------------------------------------------------------------------------------


def write_htpasswd(path: Path, username: str, password: str, *, rounds: int = 4) -> None:
    """An Apache-style htpasswd file with one bcrypt entry (low cost: labs need fast requests)."""
    import bcrypt

    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{username}:{digest}\n")
    path.chmod(0o600)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Child:
    """An emulator process: a plain subprocess (tests), or one owned by the lab daemon's supervisor
    (the lab: it dies with the daemon and is reaped by it)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str],
        cwd: Path | None,
        supervisor: Supervisor | None,
    ) -> None:
        self._supervisor = supervisor
        self._popen: subprocess.Popen[bytes] | None = None
        self._managed: ManagedProcess | None = None
        if supervisor is not None:
            self._managed = supervisor.spawn(name, argv, log_path, env=env, cwd=cwd)
        else:
            with log_path.open("ab") as logf:
                self._popen = subprocess.Popen(
                    argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd
                )

    @property
    def pid(self) -> int:
        if self._managed is not None:
            return self._managed.pid
        assert self._popen is not None
        return self._popen.pid

    def poll(self) -> int | None:
        """The exit status once it has exited, else None."""
        if self._managed is not None:
            return None if self._managed.alive() else (self._managed.returncode or 0)
        assert self._popen is not None
        return self._popen.poll()

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def stop(self, timeout: float = 5.0) -> None:
        if self._managed is not None and self._supervisor is not None:
            self._supervisor.stop(self._managed, timeout)
            return
        proc = self._popen
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _stop_process(proc: _Child | None, timeout: float = 5.0) -> None:
    if proc is not None:
        proc.stop(timeout)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


# --- sushy-emulator ------------------------------------------------------------------------------


class SushyEmulator:
    """``sushy-emulator`` on 127.0.0.1 with HTTPS and basic auth, as a subprocess.

    ``libvirt_uri`` selects the libvirt driver; otherwise ``fake_systems`` (a list of dicts with
    ``uuid``, ``name``, ``power_state``) selects the fake driver. Logs go to ``state_dir/sushy.log``.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        username: str,
        password: str,
        ca: CertificateAuthority,
        libvirt_uri: str | None = None,
        fake_systems: Sequence[dict[str, Any]] | None = None,
        port: int | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        if (libvirt_uri is None) == (fake_systems is None):
            raise LabError("sushy-emulator", "give exactly one of libvirt_uri or fake_systems")
        self.state_dir = Path(state_dir)
        self.username = username
        self._password = password
        self._ca = ca
        self.libvirt_uri = libvirt_uri
        self.fake_systems = [dict(s) for s in fake_systems] if fake_systems is not None else None
        self.port = port or free_ports(1)[0]
        self.log_path = self.state_dir / "sushy.log"
        self.ca_file = self.state_dir / "ca.crt"
        self._supervisor = supervisor
        self._proc: _Child | None = None

    @property
    def url(self) -> str:
        return f"https://{LISTEN_IP}:{self.port}"

    def address(self, system_path: str | None = None) -> str:
        """A ``redfish://`` BMC address for the driver (the only system when no path is given)."""
        return f"redfish://{LISTEN_IP}:{self.port}{system_path or ''}"

    def _write_config(self) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ca.write(self.ca_file, self.state_dir / "ca.key")
        self._ca.issue_server("sushy-emulator").write(self.state_dir / "tls.crt", self.state_dir / "tls.key")
        write_htpasswd(self.state_dir / "htpasswd", self.username, self._password)
        settings: dict[str, Any] = {
            "SUSHY_EMULATOR_LISTEN_IP": LISTEN_IP,
            "SUSHY_EMULATOR_LISTEN_PORT": self.port,
            "SUSHY_EMULATOR_SSL_CERT": str(self.state_dir / "tls.crt"),
            "SUSHY_EMULATOR_SSL_KEY": str(self.state_dir / "tls.key"),
            "SUSHY_EMULATOR_AUTH_FILE": str(self.state_dir / "htpasswd"),
            "SUSHY_EMULATOR_STATE_DIR": str(self.state_dir / "state"),
        }
        if self.libvirt_uri is not None:
            settings["SUSHY_EMULATOR_LIBVIRT_URI"] = self.libvirt_uri
        else:
            settings["SUSHY_EMULATOR_FAKE_DRIVER"] = True
            settings["SUSHY_EMULATOR_FAKE_SYSTEMS"] = self.fake_systems
        config = self.state_dir / "sushy.conf.py"
        config.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
        return config

    def start(self, timeout: float = 30.0) -> SushyEmulator:
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUSHY_EMULATOR_")}
        self._proc = _Child(
            "sushy-emulator",
            [sys.executable, "-m", "sushy_tools.emulator.main", "--config", str(config)],
            self.log_path,
            env,
            self.state_dir,
            self._supervisor,
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise LabError(
                    "sushy-emulator",
                    f"exited with {self._proc.returncode}: {_tail(self.log_path)}",
                    str(self.log_path),
                )
            try:
                with urllib.request.urlopen(f"{self.url}/redfish/v1/", context=context, timeout=1):  # noqa: S310
                    break
            except urllib.error.HTTPError:
                break  # it answers (perhaps 401): it is up
            except (urllib.error.URLError, OSError):
                if time.monotonic() >= deadline:
                    self.stop()
                    raise LabError(
                        "sushy-emulator",
                        f"not answering on {self.url} within {timeout:g}s",
                        str(self.log_path),
                    ) from None
                time.sleep(0.1)
        return self

    def _get_json(self, path: str) -> Any:
        token = base64.b64encode(f"{self.username}:{self._password}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - always https://127.0.0.1
            f"{self.url}{path}", headers={"Authorization": f"Basic {token}"}
        )
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
            return json.load(response)

    def system_paths(self) -> list[str]:
        """The ``@odata.id`` of every system the emulator lists."""
        doc = self._get_json("/redfish/v1/Systems")
        return [str(m["@odata.id"]) for m in doc.get("Members", [])]

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None

    @property
    def stopped(self) -> bool:
        return self._proc is None

    def __enter__(self) -> SushyEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- the IPMI BMC --------------------------------------------------------------------------------


class PowerBackend(Protocol):
    """What an emulated BMC switches: ``is_on()``, ``set_on(bool)``, and the system's UUID."""

    def is_on(self) -> bool: ...

    def set_on(self, on: bool) -> None: ...

    def system_uuid(self) -> uuid.UUID | None: ...


class FilePowerBackend:
    """Power kept in a JSON file (``{"power": "on"|"off"}``) that tests can read and write."""

    def __init__(self, path: Path, system_uuid: uuid.UUID | None = None, initial_on: bool = True) -> None:
        self.path = path
        self._uuid = system_uuid
        if not path.exists():
            _write_atomic(path, json.dumps({"power": "on" if initial_on else "off"}))

    def is_on(self) -> bool:
        return bool(json.loads(self.path.read_text()).get("power") == "on")

    def set_on(self, on: bool) -> None:
        _write_atomic(self.path, json.dumps({"power": "on" if on else "off"}))

    def system_uuid(self) -> uuid.UUID | None:
        return self._uuid


class LibvirtPowerBackend:
    """Power of one libvirt domain (a lab "host domain"); the UUID defaults to the domain's."""

    def __init__(self, uri: str, domain: str, system_uuid: uuid.UUID | None = None) -> None:
        import libvirt

        self._conn = libvirt.open(uri)
        self._domain = self._conn.lookupByName(domain)
        self._uuid = system_uuid or uuid.UUID(self._domain.UUIDString())

    def is_on(self) -> bool:
        return bool(self._domain.isActive())

    def set_on(self, on: bool) -> None:
        if on and not self._domain.isActive():
            self._domain.create()
        elif not on and self._domain.isActive():
            self._domain.destroy()

    def system_uuid(self) -> uuid.UUID | None:
        return self._uuid


def _serve_ipmi(
    backend: PowerBackend,
    *,
    username: str,
    password: str,
    port: int,
    ready_file: Path,
    faults_file: Path,
    stop: threading.Event,
) -> None:
    """Run an IPMI BMC until ``stop`` is set. Writes ``{"port": N, "pid": P}`` to ``ready_file``."""
    from pyghmi.ipmi import bmc as pyghmi_bmc
    from pyghmi.ipmi.private import session as pyghmi_session

    def stuck() -> bool:
        try:
            return bool(json.loads(faults_file.read_text()).get("stuck"))
        except (OSError, ValueError):
            return False

    class LabBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
        def get_power_state(self) -> str:
            return "on" if backend.is_on() else "off"

        def _set(self, on: bool) -> int:
            if stuck():
                log.warning("stuck mode: accepting a power change and ignoring it")
                return 0
            backend.set_on(on)
            return 0

        def power_off(self) -> int:
            return self._set(False)

        def power_shutdown(self) -> int:
            return self._set(False)

        def power_on(self) -> int:
            return self._set(True)

        def power_reset(self) -> int:
            self._set(False)
            return self._set(True)

        power_cycle = power_reset

        def get_system_guid(self) -> uuid.UUID:
            value = backend.system_uuid()
            if value is None:
                raise NotImplementedError
            return value

    server = LabBmc({username: password}, port=port, address=LISTEN_IP)
    bound = int(server.serversocket.getsockname()[1])
    # pyghmi files client sessions under ``server.port``; with port 0 that must be the bound port.
    server.port = bound
    _write_atomic(ready_file, json.dumps({"port": bound, "pid": os.getpid()}))
    log.info("IPMI BMC listening on %s:%d", LISTEN_IP, bound)
    while not stop.is_set():
        # A finite timeout: wait_for_rsp(None) busy-loops a core when nothing is pending.
        pyghmi_session.Session.wait_for_rsp(timeout=0.5)


class IpmiBmc:
    """An IPMI BMC subprocess on 127.0.0.1 (UDP). Power is ``state_dir/power.json`` or a libvirt domain."""

    def __init__(
        self,
        state_dir: Path,
        *,
        username: str,
        password: str,
        system_uuid: str | None = None,
        libvirt_uri: str | None = None,
        domain: str | None = None,
        initial_on: bool = True,
        port: int = 0,
        supervisor: Supervisor | None = None,
        name: str = "ipmi-bmc",
    ) -> None:
        if (libvirt_uri is None) != (domain is None):
            raise LabError("ipmi-bmc", "libvirt_uri and domain go together")
        self.state_dir = Path(state_dir)
        self.username = username
        self._password = password
        self.system_uuid = system_uuid
        self.libvirt_uri = libvirt_uri
        self.domain = domain
        self.initial_on = initial_on
        self._requested_port = port
        self.port = 0
        self.log_path = self.state_dir / "ipmi-bmc.log"
        self.power_file = self.state_dir / "power.json"
        self.faults_file = self.state_dir / "faults.json"
        self.ready_file = self.state_dir / "ipmi-ready.json"
        self._supervisor = supervisor
        self._name = name
        self._proc: _Child | None = None

    @property
    def address(self) -> str:
        return f"ipmi://{LISTEN_IP}:{self.port}"

    def start(self, timeout: float = 15.0) -> IpmiBmc:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "remediator.lab.bmc", "ipmi",
            "--state-dir", str(self.state_dir), "--username", self.username,
            "--port", str(self._requested_port),
        ]  # fmt: skip
        if self.system_uuid:
            argv += ["--system-uuid", self.system_uuid]
        if self.libvirt_uri and self.domain:
            argv += ["--libvirt-uri", self.libvirt_uri, "--domain", self.domain]
        if not self.initial_on:
            argv.append("--initially-off")
        env = dict(os.environ, **{PASSWORD_ENV: self._password})
        self._proc = _Child(self._name, argv, self.log_path, env, None, self._supervisor)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self._proc.poll() is not None:
                raise LabError(
                    "ipmi-bmc",
                    f"exited with {self._proc.returncode}: {_tail(self.log_path)}",
                    str(self.log_path),
                )
            if time.monotonic() >= deadline:
                self.stop()
                raise LabError("ipmi-bmc", f"not ready within {timeout:g}s", str(self.log_path))
            time.sleep(0.05)
        self.port = int(json.loads(self.ready_file.read_text())["port"])
        return self

    # Test and scenario controls (file-backed power only for the power ones).
    def is_on(self) -> bool:
        return bool(json.loads(self.power_file.read_text()).get("power") == "on")

    def set_power(self, on: bool) -> None:
        _write_atomic(self.power_file, json.dumps({"power": "on" if on else "off"}))

    def set_stuck(self, stuck: bool) -> None:
        """In stuck mode the BMC accepts power commands and does nothing."""
        _write_atomic(self.faults_file, json.dumps({"stuck": stuck}))

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None

    def __enter__(self) -> IpmiBmc:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- a scripted Redfish BMC (misbehaving remote devices) -----------------------------------------


@dataclass
class ScriptedSystem:
    """One system of a :class:`ScriptedRedfishBmc`; every field can be changed while it runs."""

    id: str = "1"
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    serial: str | None = "SN-0001"
    power_on: bool = True
    #: ResetType@Redfish.AllowableValues; ``None`` omits the annotation (meaning: all allowed).
    allowed_reset_types: list[str] | None = field(
        default_factory=lambda: ["On", "ForceOff", "GracefulShutdown", "ForceRestart"]
    )
    #: Accept reset commands (204) but never change power.
    stuck: bool = False
    #: Report this PowerState instead of the real one (e.g. "PoweringOff", "Bogus").
    reported_power_state: str | None = None
    #: Seconds between an accepted reset and the power change (like a real host's shutdown time).
    power_delay_s: float = 0.0
    _pending: tuple[bool, float] | None = field(default=None, repr=False)

    def current_power(self) -> bool:
        if self._pending is not None and time.monotonic() >= self._pending[1]:
            self.power_on, self._pending = self._pending[0], None
        return self.power_on

    def request_power(self, on: bool) -> None:
        if self.power_delay_s <= 0:
            self.power_on, self._pending = on, None
        else:
            self._pending = (on, time.monotonic() + self.power_delay_s)


class ScriptedRedfishBmc:
    """An HTTPS Redfish BMC in a background thread whose faults tests switch on and off.

    ``garbage`` makes authenticated GETs answer 200 with a non-JSON body; ``fail_status`` makes every
    authenticated request answer that HTTP status. ``sessions`` offers a SessionService (X-Auth-Token).
    """

    def __init__(
        self,
        *,
        username: str,
        password: str,
        ca: CertificateAuthority,
        systems: Sequence[ScriptedSystem] = (),
        sessions: bool = True,
    ) -> None:
        self.username = username
        self._password = password
        self.systems = {s.id: s for s in (systems or [ScriptedSystem()])}
        self.sessions_enabled = sessions
        self.garbage = False
        self.fail_status: int | None = None
        self.requests: list[tuple[str, str]] = []
        self._tokens: dict[str, str] = {}
        self._lock = threading.Lock()
        pair = ca.issue_server("scripted-redfish")
        self._cert_dir: Path | None = None
        self._pair = pair
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{LISTEN_IP}:{self.port}"

    def address(self, system_id: str | None = None) -> str:
        path = f"/redfish/v1/Systems/{system_id}" if system_id else ""
        return f"redfish://{LISTEN_IP}:{self.port}{path}"

    def reset(self, systems: Sequence[ScriptedSystem]) -> None:
        """Well-behaved again, with these systems and an empty request log (open sessions stay)."""
        self.systems = {s.id: s for s in systems}
        self.sessions_enabled = True
        self.garbage = False
        self.fail_status = None
        self.requests.clear()

    def start(self, cert_dir: Path) -> ScriptedRedfishBmc:
        self._cert_dir = Path(cert_dir)
        cert, key = self._cert_dir / "scripted.crt", self._cert_dir / "scripted.key"
        self._pair.write(cert, key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        httpd = ThreadingHTTPServer((LISTEN_IP, 0), _make_handler(self))
        httpd.daemon_threads = True
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._httpd = httpd
        self.port = int(httpd.server_address[1])
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- request handling (called from the handler threads) --

    def _authorized(self, headers: Any) -> bool:
        token = headers.get("X-Auth-Token")
        if token:
            with self._lock:
                return token in self._tokens
        value = headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(value[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return self._check(user, password)

    def _check(self, user: str, password: str) -> bool:
        return hmac.compare_digest(user.encode(), self.username.encode()) and hmac.compare_digest(
            password.encode(), self._password.encode()
        )

    def _system_doc(self, s: ScriptedSystem) -> dict[str, Any]:
        path = f"/redfish/v1/Systems/{s.id}"
        reset: dict[str, Any] = {"target": f"{path}/Actions/ComputerSystem.Reset"}
        if s.allowed_reset_types is not None:
            reset["ResetType@Redfish.AllowableValues"] = list(s.allowed_reset_types)
        doc: dict[str, Any] = {
            "@odata.id": path,
            "@odata.type": "#ComputerSystem.v1_10_0.ComputerSystem",
            "Id": s.id,
            "Name": f"scripted-{s.id}",
            "UUID": s.uuid,
            "PowerState": s.reported_power_state or ("On" if s.current_power() else "Off"),
            "Actions": {"#ComputerSystem.Reset": reset},
        }
        if s.serial is not None:
            doc["SerialNumber"] = s.serial
        return doc

    def _root_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "@odata.id": "/redfish/v1/",
            "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot",
            "Id": "RootService",
            "Name": "Scripted Redfish BMC",
            "RedfishVersion": "1.10.0",
            "UUID": "00000000-0000-0000-0000-00000000beef",
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
        }
        if self.sessions_enabled:
            doc["SessionService"] = {"@odata.id": "/redfish/v1/SessionService"}
            doc["Links"] = {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
        return doc

    def handle(  # noqa: PLR0911, PLR0912 - a flat routing table reads best
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        self.requests.append((method, path))
        path = path.rstrip("/") or "/"
        if method == "GET" and path in ("/redfish/v1", "/redfish"):
            return _json(200, self._root_doc())
        if method == "POST" and path == "/redfish/v1/SessionService/Sessions" and self.sessions_enabled:
            try:
                creds = json.loads(body or b"{}")
            except ValueError:
                return _json(400, {"error": {"message": "bad JSON"}})
            if not self._check(str(creds.get("UserName", "")), str(creds.get("Password", ""))):
                return _json(401, {"error": {"message": "invalid credentials"}})
            token, sid = uuid.uuid4().hex, uuid.uuid4().hex[:8]
            with self._lock:
                self._tokens[token] = sid
            location = f"/redfish/v1/SessionService/Sessions/{sid}"
            status, hdrs, payload = _json(201, {"@odata.id": location, "Id": sid, "UserName": self.username})
            return status, {**hdrs, "X-Auth-Token": token, "Location": location}, payload
        if not self._authorized(headers):
            return _json(
                401, {"error": {"message": "authentication required"}}, {"WWW-Authenticate": "Basic"}
            )
        if self.fail_status is not None:
            return _json(self.fail_status, {"error": {"message": "scripted failure"}})
        if method == "DELETE" and path.startswith("/redfish/v1/SessionService/Sessions/"):
            sid = path.rsplit("/", 1)[1]
            with self._lock:
                for token, value in list(self._tokens.items()):
                    if value == sid:
                        del self._tokens[token]
            return 204, {}, b""
        if method == "GET" and self.garbage:
            return 200, {"Content-Type": "application/json"}, b"<html>this is not JSON</html>"
        if method == "GET" and path == "/redfish/v1/Systems":
            members = [{"@odata.id": f"/redfish/v1/Systems/{i}"} for i in self.systems]
            return _json(200, {
                "@odata.id": "/redfish/v1/Systems", "Name": "Systems",
                "Members": members, "Members@odata.count": len(members),
            })  # fmt: skip
        parts = path.split("/")
        if len(parts) >= 5 and parts[:4] == ["", "redfish", "v1", "Systems"] and parts[4] in self.systems:
            system = self.systems[parts[4]]
            if method == "GET" and len(parts) == 5:
                return _json(200, self._system_doc(system))
            if method == "POST" and parts[5:] == ["Actions", "ComputerSystem.Reset"]:
                return self._reset(system, body)
        return _json(404, {"error": {"message": f"no resource {path}"}})

    def _reset(self, system: ScriptedSystem, body: bytes) -> tuple[int, dict[str, str], bytes]:
        try:
            reset_type = str(json.loads(body or b"{}").get("ResetType"))
        except ValueError:
            return _json(400, {"error": {"message": "bad JSON"}})
        allowed = system.allowed_reset_types
        if allowed is not None and reset_type not in allowed:
            return _json(400, {"error": {"message": f"ResetType {reset_type} not allowed"}})
        if not system.stuck:
            if reset_type in ("ForceOff", "GracefulShutdown"):
                system.request_power(False)
            elif reset_type in ("On", "ForceOn", "ForceRestart", "GracefulRestart"):
                system.request_power(True)
        return 204, {}, b""


def _json(
    status: int, doc: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()


def _make_handler(bmc: ScriptedRedfishBmc) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out as separate writes; without this, Nagle plus the client's
            # delayed ACK add ~40 ms to every keep-alive request.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, payload = bmc.handle(self.command, self.path, self.headers, body)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("scripted redfish: " + format, *args)

    return Handler


# --- command line (the IPMI BMC process) ---------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m remediator.lab.bmc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    ipmi = sub.add_parser("ipmi", help=f"run an IPMI BMC on {LISTEN_IP} (password from ${PASSWORD_ENV})")
    ipmi.add_argument("--state-dir", type=Path, required=True)
    ipmi.add_argument("--username", required=True)
    ipmi.add_argument(
        "--port", type=int, default=0, help="UDP port (0: the kernel picks; see ipmi-ready.json)"
    )
    ipmi.add_argument("--system-uuid", type=uuid.UUID)
    ipmi.add_argument("--libvirt-uri")
    ipmi.add_argument("--domain")
    ipmi.add_argument("--initially-off", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        parser.error(f"set ${PASSWORD_ENV}")
    state_dir: Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    backend: PowerBackend
    if args.libvirt_uri:
        backend = LibvirtPowerBackend(args.libvirt_uri, args.domain, args.system_uuid)
    else:
        backend = FilePowerBackend(state_dir / "power.json", args.system_uuid, not args.initially_off)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        _serve_ipmi(
            backend,
            username=args.username,
            password=password,
            port=args.port,
            ready_file=state_dir / "ipmi-ready.json",
            faults_file=state_dir / "faults.json",
            stop=stop,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
