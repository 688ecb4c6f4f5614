"""OpenStack clients the Glance source needs (Keystone)."""
