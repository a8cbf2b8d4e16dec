"""Remediator: fencing and bare-metal remediation for Kubernetes.

The package holds the controller (health policy, the Fence state machine, fence drivers), its
command-line interface and the one-machine lab. ``vmcore`` beside it is the bundled VM core.
"""

__version__ = "0.1.0"
