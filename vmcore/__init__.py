"""vmcore: the bundled VM core on libvirt (VirtualMachine resources, controller, per-node handler)."""
