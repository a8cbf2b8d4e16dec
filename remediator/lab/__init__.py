"""The one-machine lab: a real local control plane, emulated hosts with real BMC endpoints, scenarios."""
