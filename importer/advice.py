"""What an error message tells the user to change, in the words of where they meet it.

The same failure (a 401, an unknown CA) reaches a CLI user, who fixes it with a flag, and a CDI
user, who fixes it in the DataVolume's secret or config map and never sees a flag. Sources
raise with these phrases instead of naming flags; each front-end says once, at start, which
words it speaks (`use("pod")` in the pod, the upload server, the cloner and the populators).
"""

from __future__ import annotations

__all__ = ["ca", "cli_only", "converter", "credentials", "insecure", "thumbprint", "use"]

_front = "cli"

_WORDS = {
    "credentials": {
        "cli": "--username with --password-file",
        "pod": "the data source's secret (keys accessKeyId and secretKey)",
    },
    "ca": {
        "cli": "--ca-dir (or --ca-file)",
        "pod": "the data source's certConfigMap",
    },
    "insecure": {
        "cli": "--insecure",
        "pod": "INSECURE_TLS (CDIConfig's insecureRegistries for a registry)",
    },
    "converter": {
        "cli": "--converter qemu-img",
        "pod": "IMPORTER_CONVERTER=qemu-img",
    },
    "thumbprint": {
        "cli": "--thumbprint",
        "pod": "the VDDK data source's thumbprint",
    },
}


def use(front: str) -> None:
    """Which words the process speaks: "cli" (the default) or "pod"."""
    global _front
    if front not in ("cli", "pod"):
        raise ValueError(front)
    _front = front


def _say(what: str) -> str:
    return _WORDS[what][_front]


def credentials() -> str:
    return _say("credentials")


def ca() -> str:
    return _say("ca")


def insecure() -> str:
    return _say("insecure")


def converter() -> str:
    return _say("converter")


def thumbprint() -> str:
    return _say("thumbprint")


def speaks_cli() -> bool:
    return _front == "cli"


def cli_only(flag: str) -> str:
    """` (FLAG)` after a value the CLI lets the user change and a pod does not; nothing in a
    pod."""
    return f" ({flag})" if _front == "cli" else ""
