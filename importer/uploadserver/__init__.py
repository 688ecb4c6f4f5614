"""CDI's upload server (server.py) and the target side of host-assisted clones (clone.py)."""
