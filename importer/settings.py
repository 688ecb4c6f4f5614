"""The settings the core takes, as types only: what every front-end builds (through
config.py's validator) and the engine, plans and sources read. Nothing here validates or reads
the environment, and nothing here imports a source module but its options' types, so the
layers below the configuration never import config.py (issue 22)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .checksum import ChecksumSpec
from .sources.options import HttpOptions, SourceOptions

__all__ = ["CONVERTERS", "HELPER_ENV", "INPUT_FORMATS", "MAX_FILE_SIZE", "OUTPUT_FORMATS",
           "ContentType", "Front", "ImportConfig", "OutputSpec", "Problem"]

#: "auto": the native reader where one exists (qcow2), qemu-img otherwise
CONVERTERS = ("auto", "qemu-img")
#: what --format may name (qemu-img's -f names; vhd is qemu's vpc)
INPUT_FORMATS = ("raw", "qcow2", "vmdk", "vdi", "vhd", "vhdx", "iso", "ova")
#: -O: raw, or what qemu-img writes (vpc is qemu's name for VHD)
OUTPUT_FORMATS = ("raw", "qcow2", "vmdk", "vhdx", "vdi", "vpc")
#: what a docker credential helper needs of the user's environment to reach its keychain
HELPER_ENV = ("HOME", "USER", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "GNUPGHOME",
              "PASSWORD_STORE_DIR", "PATH")
#: off_t is signed 64-bit: nothing larger can be a file size or a device offset
MAX_FILE_SIZE = (1 << 63) - 1


class ContentType(StrEnum):
    KUBEVIRT = "kubevirt"  # a disk image
    ARCHIVE = "archive"  # a tar to extract into a directory


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """The CLI's -O: a format other than raw, written by qemu-img at `path` (a private working
    directory's file, renamed onto DEST by output_format.py). The pod always writes raw."""

    format: str
    compress: bool
    path: Path

    @property
    def qemu_options(self) -> tuple[str, ...]:
        """qemu-img convert's output options: qcow2's compressed clusters, vmdk's compressed
        form (streamOptimized)."""
        if self.format == "vpc":  # the exact size, not one rounded to a CHS geometry
            return ("-O", "vpc", "-o", "force_size=on")
        if not self.compress:
            return ("-O", self.format)
        if self.format == "vmdk":
            return ("-O", "vmdk", "-o", "subformat=streamOptimized")
        return ("-O", self.format, "-c")


@dataclass(frozen=True, slots=True)
class ImportConfig:
    source: str
    dest: Path
    content_type: ContentType = ContentType.KUBEVIRT
    image_size: int | None = None  # the resulting disk's size: grown to, never shrunk
    #: the most the image may need (virtual size); defaults to image_size. The pod sets it to the
    #: space CDI reports available, which may exceed the overhead-reduced image_size
    size_limit: int | None = None
    preallocation: bool = False
    checksum: ChecksumSpec | None = None
    scratch_dir: Path | None = None
    #: staging without scratch_dir is an error (the pod's scratch-space-required protocol)
    scratch_required: bool = False
    http: HttpOptions = field(default_factory=HttpOptions)
    #: qemu-img cache mode: None = choose (O_DIRECT when the target accepts it)
    cache_mode: str | None = None
    #: parallel ranged reads for random-access sources
    connections: int = 4
    #: what SOURCE is when its scheme cannot tell (a path-style S3 endpoint is plain https);
    #: a name of sources/kinds.py, "auto", or "blank" (a new empty disk)
    source_kind: str = "auto"
    #: the options of the source's kind (sources/options.py)
    options: SourceOptions = None
    #: a tar given as a disk image is written as raw bytes (CDI does, and its tests check the
    #: md5), instead of refused with advice to use the archive content type
    tar_as_raw: bool = False
    #: who converts formats other than raw: "auto" (the native reader where there is one,
    #: qemu-img otherwise) or "qemu-img" (always; for comparison and as a fallback)
    converter: str = "auto"
    #: --format: the image format the data must have (after decompression); raw is taken as
    #: it is, without looking at its bytes
    input_format: str | None = None
    #: -O: the plans that convert with qemu-img write this format at once (no raw copy)
    output: OutputSpec | None = None
    #: --disk: which disk of an OVA (its number from 1, file name or disk id); None: the only
    #: one
    ova_disk: str | None = None
    #: an archive may replace what its directory already holds (the pod's and the upload
    #: server's volumes; the CLI only with --force, as it replaces a file DEST)
    replace_existing: bool = True

    @property
    def delta_of(self) -> str | None:
        """The checkpoint a warm import's delta stage applies onto (the previous stage's); None
        for a full import. The target must exist: it is written in place."""
        return getattr(self.options, "previous_checkpoint", None) or None

    @property
    def capacity(self) -> int | None:
        """The most the target may take: the pod's available space, else --image-size."""
        return self.size_limit if self.size_limit is not None else self.image_size


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid setting: which field, the message naming it as the front-end does, and the
    bare reason (the pod words some reasons into CDI's exact termination messages)."""

    field: str
    text: str
    detail: str = ""

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class Front:
    """How a front-end names the settings in its messages (`--image-size` or
    `IMPORTER_IMAGE_SIZE`), and the few rules in which the CLI and the CDI pod differ."""

    names: Mapping[str, str]
    #: credentials in an http(s) URL: the pod uses them as basic auth (CDI's Go client does,
    #: and the controller passes such URLs); the CLI refuses them (process lists, shell history)
    url_credentials: bool = False
    #: the variable that may hold the password when no other was given
    password_variable: str | None = "IMPORTER_PASSWORD"
    #: the pod finds its destination from its volumes and checks it itself
    check_dest: bool = True
    #: IMPORTER_SOURCE names any kind of the table; `--source` only those it may force
    any_kind: bool = False

    #: how a message shows a setting's value: `--converter 'x'` or `IMPORTER_CONVERTER='x'`
    separator: str = " "

    #: a setting it does not list is named as its flag would be (`image_id`: `--image-id`): a
    #: kind's own flags (sources/kinds.py) are named without a table entry here
    dashed_flags: bool = False

    def name(self, field: str) -> str:
        if self.dashed_flags:
            return self.names.get(field, "--" + field.replace("_", "-"))
        return self.names.get(field, field)

    def setting(self, field: str, value: object) -> str:
        return f"{self.name(field)}{self.separator}{value!r}"
