"""CDI's termination message (docs/pod-contract.md 1.6): JSON on exit 0, plain text otherwise, one
line, at most 4096 bytes, shortened gracefully instead of failing (CDI quirk Q20)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

__all__ = ["MAX_BYTES", "json_message", "text_message", "write_if_mounted",
           "write_termination_message"]

log = logging.getLogger(__name__)
MAX_BYTES = 4096


def _fit(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


def json_message(message: str, *, scratch_space_required: bool | None = None,
                 preallocation_applied: bool | None = None,
                 labels: dict[str, str] | None = None,
                 vddk_info: dict[str, str] | None = None) -> str:
    """Fields in Go's order, each present only when set, as the controller decodes them."""

    def render(msg: str, lab: dict[str, str] | None) -> str:
        obj: dict[str, object] = {}
        if scratch_space_required is not None:
            obj["scratchSpaceRequired"] = scratch_space_required
        if preallocation_applied is not None:
            obj["preallocationApplied"] = preallocation_applied
        if vddk_info is not None:  # Go's struct: capitalised keys, in its field order
            obj["vddkInfo"] = {"Version": vddk_info.get("Version", ""),
                               "Host": vddk_info.get("Host", "")}
        if lab:
            obj["labels"] = dict(sorted(lab.items()))  # Go's encoding/json sorts map keys
        obj["message"] = msg
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)

    message = " ".join(message.split())
    out = render(message, labels)
    if len(out.encode()) <= MAX_BYTES:
        return out
    if labels and len(render(message, None).encode()) <= MAX_BYTES:
        log.warning("termination message too long: image labels dropped")
        return render(message, None)
    overflow = len(render(message, None).encode()) - MAX_BYTES
    return render(_fit(message, max(16, len(message.encode()) - overflow - 8)), None)


def text_message(message: str) -> str:
    return _fit(" ".join(message.split()), MAX_BYTES)


def write_termination_message(path: Path, text: str) -> bool:
    """Whether it was written; a failure is logged (the exit code still tells the controller
    what happened)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        log.error("cannot write the termination message to %s: %s", path, exc)
        return False
    return True


def write_if_mounted(path: Path, text: str) -> None:
    """A one-line message, where the kubelet mounted the termination log (a program that may
    also run by hand never creates it: /dev is then the host's)."""
    if path.is_file():
        write_termination_message(path, text_message(text))
