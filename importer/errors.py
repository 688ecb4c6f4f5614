"""The importer's exception hierarchy.

Every failure a user can cause or meet is one of these, raised with a message that says what
went wrong, where, and what to do. Third-party exceptions (http.client, SDKs, OSError, qemu-img exit codes,
codec errors) are translated into them at the boundary of the module that calls the library, so
front-ends only ever see this tree::

    ImporterError                  exit 1 unless stated
    ├── ConfigError                exit 2: invalid option, variable or value
    ├── SourceError                reaching or reading the source
    │   ├── SourceNotFoundError    the object does not exist (HTTP 404/410)
    │   ├── SourceAuthError        credentials missing or refused (HTTP 401/403)
    │   ├── SourceTLSError         certificate verification or handshake failed
    │   ├── SourceUnavailableError network errors and 5xx that outlived the retries
    │   ├── SourceUnreachableError the host name does not resolve, or nothing listens there
    │   └── SourceContentError     the server answered, but not with the image (HTML, short body)
    ├── FormatError                the data is not a usable image (corrupt, truncated, unknown)
    │   └── UnsafeImageError       a well-formed image refused for safety (backing file, ...)
    ├── TargetError                the destination cannot take the image
    │   └── TargetTooSmallError    virtual size larger than the target
    ├── ScratchSpaceRequiredError  the import must be staged but no scratch space was given
    ├── ChecksumMismatchError      the bytes received do not match --checksum
    ├── ConversionError            qemu-img failed
    ├── KubernetesApiError         the Kubernetes API refused or failed a request (the poller)
    └── CancelledError             stopped by a signal: exit 128 + N
"""

from __future__ import annotations

__all__ = [
    "CancelledError",
    "ChecksumMismatchError",
    "ConfigError",
    "ConversionError",
    "FormatError",
    "ImporterError",
    "KubernetesApiError",
    "ScratchSpaceRequiredError",
    "SourceAuthError",
    "SourceContentError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTLSError",
    "SourceUnavailableError",
    "SourceUnreachableError",
    "TargetError",
    "TargetTooSmallError",
    "UnsafeImageError",
]


class ImporterError(Exception):
    """Base of every error the importer reports to a user."""

    exit_code = 1
    #: whether retrying the same import later may succeed (network trouble) or not (404, bad image)
    transient = False


class ConfigError(ImporterError):
    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None,
                 termination: str | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        #: the pod's termination message when CDI has an exact one for this problem
        self.termination = termination


class SourceError(ImporterError):
    #: raised while the source was being opened (connected, logged in, its object found):
    #: the pod words these as CDI does, "Unable to connect to <source> data source: ..."
    connecting = False


class SourceNotFoundError(SourceError):
    pass


class SourceAuthError(SourceError):
    pass


class SourceTLSError(SourceError):
    pass


class SourceUnavailableError(SourceError):
    transient = True


class SourceUnreachableError(SourceError):
    """DNS failure or a refused connection: a typo far more often than an outage, so it gets a
    couple of quick retries (a server that is just starting) and is then permanent."""


class SourceContentError(SourceError):
    pass


class FormatError(ImporterError):
    pass


class UnsafeImageError(FormatError):
    """`format` and `virtual_size`: what the header said before it was refused, when known
    (inspect reports them beside the reason)."""

    def __init__(self, message: str, *, format: str | None = None,
                 virtual_size: int | None = None) -> None:
        super().__init__(message)
        self.format = format
        self.virtual_size = virtual_size


class TargetError(ImporterError):
    pass


class TargetTooSmallError(TargetError):
    def __init__(self, message: str, *, required: int, available: int) -> None:
        super().__init__(message)
        self.required = required
        self.available = available


class ScratchSpaceRequiredError(ImporterError):
    pass


class ChecksumMismatchError(ImporterError):
    pass


class ConversionError(ImporterError):
    pass


class KubernetesApiError(ImporterError):
    """A request of cdi-source-update-poller to the Kubernetes API failed: refused (4xx, not
    transient) or unanswered (5xx, no connection: transient)."""


class CancelledError(ImporterError):
    def __init__(self, signum: int) -> None:
        import signal

        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"import stopped by {name}; nothing was reported as imported")
        self.signum = signum
        self.exit_code = 128 + signum
