"""The blank plan: a new empty disk of the requested size (the pod's IMPORTER_SOURCE=none)."""

from __future__ import annotations

from ..errors import ConfigError
from ..result import ImportResult
from ..settings import ImportConfig
from ..sinks.blank import create_blank
from ..sinks.target import Target
from . import Plan

__all__ = ["run"]


def run(config: ImportConfig, plan: Plan, result: ImportResult) -> None:
    if config.image_size is None:
        raise ConfigError("a blank disk needs a size (--image-size)")
    target = Target(config.dest)
    result.target_kind = "block" if target.is_block else "file"
    result.preallocated = create_blank(target, config.image_size,
                                       preallocate=config.preallocation)
    result.virtual_size = target.capacity if target.is_block else config.image_size
