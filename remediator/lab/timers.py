"""The lab's timers, and how they map onto the flags of the upstream components.

Production clusters detect a dead node after kube-controller-manager's ``node-monitor-grace-period``
(50 s by default since Kubernetes 1.32, 40 s before) and evict its pods after the
``default-unreachable-toleration-seconds`` (300 s). The lab shortens detection so that a failure can
be watched in seconds; the README states both sets of values.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Upstream defaults, for comparison in the README and `lab status`.
PRODUCTION_NODE_MONITOR_GRACE_S = 50.0
PRODUCTION_NODE_MONITOR_PERIOD_S = 5.0
PRODUCTION_NODE_LEASE_DURATION_S = 40
PRODUCTION_UNREACHABLE_TOLERATION_S = 300


@dataclass(frozen=True)
class LabTimers:
    """Timers of a lab. Durations are seconds."""

    #: How long a node may go without renewing its lease before it is marked Ready=Unknown.
    node_monitor_grace_period: float = 10.0
    #: How often kube-controller-manager checks node health.
    node_monitor_period: float = 1.0
    #: How long a node that never reported may take to register as Ready.
    node_startup_grace_period: float = 20.0
    #: The lease duration kwok sets; it renews the lease every quarter of it (like the kubelet).
    node_lease_duration: int = 4
    #: Toleration that the DefaultTolerationSeconds admission plugin gives pods for the
    #: unreachable/not-ready taints (upstream 300 s). The remediator acts long before it runs out.
    unreachable_toleration: int = 300

    def __post_init__(self) -> None:
        if self.node_monitor_period <= 0 or self.node_monitor_grace_period <= 0:
            raise ValueError("node monitor period and grace period must be positive")
        if self.node_monitor_grace_period <= self.node_monitor_period:
            raise ValueError("node-monitor-grace-period must be longer than node-monitor-period")
        if self.node_lease_duration < 1:
            raise ValueError("node lease duration must be at least 1 s")
        if self.node_lease_duration / 4 >= self.node_monitor_grace_period:
            raise ValueError("nodes must renew their lease (every lease-duration/4) within the grace period")

    @property
    def lease_renew_interval(self) -> float:
        return self.node_lease_duration / 4

    def controller_manager_flags(self) -> list[str]:
        return [
            f"--node-monitor-period={_go_duration(self.node_monitor_period)}",
            f"--node-monitor-grace-period={_go_duration(self.node_monitor_grace_period)}",
            f"--node-startup-grace-period={_go_duration(self.node_startup_grace_period)}",
        ]

    def apiserver_flags(self) -> list[str]:
        return [
            f"--default-unreachable-toleration-seconds={self.unreachable_toleration}",
            f"--default-not-ready-toleration-seconds={self.unreachable_toleration}",
        ]

    def as_dict(self) -> dict[str, float]:
        return {
            "nodeMonitorGracePeriodSeconds": self.node_monitor_grace_period,
            "nodeMonitorPeriodSeconds": self.node_monitor_period,
            "nodeStartupGracePeriodSeconds": self.node_startup_grace_period,
            "nodeLeaseDurationSeconds": self.node_lease_duration,
            "unreachableTolerationSeconds": self.unreachable_toleration,
        }


def _go_duration(seconds: float) -> str:
    """A Go duration string: 10 -> '10s', 0.5 -> '500ms'."""
    millis = round(seconds * 1000)
    if millis % 1000 == 0:
        return f"{millis // 1000}s"
    return f"{millis}ms"
