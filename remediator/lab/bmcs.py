"""The lab's BMCs: every host gets a Redfish endpoint (one ``sushy-emulator`` for the lab, libvirt
driver, HTTPS with the lab CA, basic auth) and an IPMI endpoint (one pyghmi BMC per host), both
switching the host's domain in the hardware libvirtd, all on 127.0.0.1.

``install`` puts into the cluster what the controller needs to use them: one credentials Secret per
host in the controller's namespace (``username``, ``password``, ``ca.crt``) and one ``NodeFencing``
per host listing Redfish first and IPMI second. The lab's credentials are generated per lab and kept
in ``STATE_DIR/bmc/credentials.json`` (mode 0600) for ``remediator lab bmc``.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from remediator import kube
from remediator.errors import LabError
from remediator.lab.bmc import IpmiBmc, SushyEmulator
from remediator.lab.pki import CertificateAuthority
from remediator.lab.procs import Supervisor
from remediator.nodefencing import (
    CONTROLLER_NAMESPACE_DEFAULT,
    GROUP,
    PLURAL,
    VERSION,
    node_fencing_manifest,
)

BMC_USERNAME = "admin"


def secret_name(host: str) -> str:
    return f"bmc-{host}"


class LabBmcs:
    """Starts the BMC endpoints of a lab and registers them with the cluster."""

    def __init__(
        self, root: Path, supervisor: Supervisor, ca: CertificateAuthority, hardware_uri: str
    ) -> None:
        self.root = root
        self.supervisor = supervisor
        self.ca = ca
        self.hardware_uri = hardware_uri
        self.username = BMC_USERNAME
        self.password = secrets.token_hex(10)  # hex: safe to paste into any shell command
        self.redfish: SushyEmulator | None = None
        self.ipmi: dict[str, IpmiBmc] = {}
        self._write_credentials()

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.crt"

    def _write_credentials(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.credentials_file.touch(mode=0o600, exist_ok=True)
        self.credentials_file.write_text(json.dumps({"username": self.username, "password": self.password}))
        self.ca_file.write_bytes(self.ca.cert_pem)

    def _start_new_redfish(self) -> None:
        self.redfish = SushyEmulator(
            self.root / "redfish",
            username=self.username,
            password=self.password,
            ca=self.ca,
            libvirt_uri=self.hardware_uri,
            supervisor=self.supervisor,
        ).start()

    @property
    def redfish_stopped(self) -> bool:
        return self.redfish is not None and self.redfish.stopped

    def stop_redfish(self) -> None:
        """Take the Redfish endpoint away (connections are refused until ``start_redfish``)."""
        if self.redfish is not None:
            self.redfish.stop()

    def start_redfish(self) -> None:
        if self.redfish is not None:
            self.redfish.start()
            return
        self._start_new_redfish()

    def start_ipmi(self, host: str, system_uuid: str) -> None:
        self.ipmi[host] = IpmiBmc(
            self.root / f"ipmi-{host}",
            username=self.username,
            password=self.password,
            system_uuid=system_uuid,
            libvirt_uri=self.hardware_uri,
            domain=host,
            supervisor=self.supervisor,
            name=f"ipmi-bmc-{host}",
        ).start()

    def endpoints(self, host: str, system_uuid: str) -> dict[str, str]:
        if self.redfish is None or host not in self.ipmi:
            raise LabError("lab bmc", f"{host} has no BMC endpoints yet")
        return {
            "redfish": f"redfish+https://127.0.0.1:{self.redfish.port}/redfish/v1/Systems/{system_uuid}",
            "ipmi": self.ipmi[host].address,
        }

    def fence_levels(self, host: str, system_uuid: str) -> list[dict[str, Any]]:
        """The host's NodeFencing levels: Redfish first, IPMI second, with lab-sized timeouts."""
        endpoints = self.endpoints(host, system_uuid)
        return [
            {
                "type": "redfish",
                "address": endpoints["redfish"],
                "credentialsSecret": secret_name(host),
                "callTimeoutSeconds": 5,
                "powerTimeoutSeconds": 10,
                "attempts": 2,
            },
            {
                "type": "ipmi",
                "address": endpoints["ipmi"],
                "credentialsSecret": secret_name(host),
                # The lab's IPMI BMCs are pyghmi servers, which speak only HMAC-SHA1.
                "ipmiLegacySHA1": True,
                "callTimeoutSeconds": 5,
                "powerTimeoutSeconds": 10,
                "attempts": 2,
            },
        ]

    def install(self, api: client.ApiClient, hosts: dict[str, str]) -> None:
        """Secrets and NodeFencing objects for ``hosts`` (name -> system UUID)."""
        core = client.CoreV1Api(api)
        custom = client.CustomObjectsApi(api)
        kube.ensure_namespace(core, CONTROLLER_NAMESPACE_DEFAULT)
        for host, system_uuid in hosts.items():
            kube.create_or_replace_secret(
                core,
                CONTROLLER_NAMESPACE_DEFAULT,
                secret_name(host),
                {
                    "username": self.username.encode(),
                    "password": self.password.encode(),
                    "ca.crt": self.ca.cert_pem,
                },
            )
            manifest = node_fencing_manifest(host, self.fence_levels(host, system_uuid))
            try:
                custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, manifest)
            except ApiException as exc:
                if exc.status != 409:
                    raise LabError(
                        "NodeFencing", f"creating {host}'s NodeFencing failed: {exc.reason}"
                    ) from exc
