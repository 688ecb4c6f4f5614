"""oVirt / RHV: the engine's REST API (engine_api.py), the life of one image transfer
(transfer.py), and the imageio daemon's data API (daemon.py). sources/imageio.py puts them
together as a source (docs/pod-contract.md 4.5)."""
