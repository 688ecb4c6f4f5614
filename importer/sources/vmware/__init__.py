"""VMware vSphere: the inventory (inventory.py, pyvmomi) and nbdkit's vddk plugin serving the
disk (nbdkit_vddk.py). sources/vddk.py puts them together as a source (docs/pod-contract.md 4.6)."""
