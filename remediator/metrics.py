"""Prometheus metrics of the controllers, and the endpoint that serves them.

Series (all prefixed ``remediator_``):

* ``unhealthy_nodes{policy}`` -- nodes a NodeHealthCheck currently finds unhealthy;
* ``remediations_total{policy,outcome}`` -- remediations started, succeeded and failed (escalated);
* ``storm_active{policy}`` -- 1 while a storm holds remediation back;
* ``unhealthy_to_fence_verified_seconds{policy}`` -- from a node turning unhealthy to its Fence
  reading the host back off.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

UNHEALTHY_NODES = Gauge(
    "remediator_unhealthy_nodes", "Nodes a NodeHealthCheck currently finds unhealthy.", ["policy"]
)
REMEDIATIONS = Counter(
    "remediator_remediations_total",
    "Remediations by NodeHealthCheck policy and outcome (started, succeeded, failed).",
    ["policy", "outcome"],
)
STORM_ACTIVE = Gauge(
    "remediator_storm_active", "1 while too many unhealthy nodes hold remediation back.", ["policy"]
)
UNHEALTHY_TO_VERIFIED = Histogram(
    "remediator_unhealthy_to_fence_verified_seconds",
    "Time from a node turning unhealthy to its Fence reading the host back off.",
    ["policy"],
    buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600),
)


def serve(port: int, address: str = "127.0.0.1") -> None:
    """Serve /metrics on ``address:port`` in a background thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=address)
