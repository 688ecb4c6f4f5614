"""A guest disk served over NBD (nbdkit's vddk plugin): read at random on several connections,
mapped by `base:allocation` block status.

Why our own client: libnbd's Python bindings exist only as a Debian package (python3-libnbd),
built for Debian's interpreter; the importer runs in a venv (and in the image, from one) and
would need the system's site-packages grafted in, for the one source that needs it. The part of
the protocol a reader needs is small: the fixed newstyle handshake, structured replies, one
meta context, READ and BLOCK_STATUS. Written here over a unix socket, with every length the
server sends bounded, and each connection owned by one thread at a time (no pipelining: the
extent copier's parallelism is one connection per worker, as nbdcopy's).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator

from ..errors import SourceContentError, SourceError, SourceUnavailableError
from ..nbd_protocol import (
    CHUNK_BLOCK_STATUS,
    CHUNK_ERROR,
    CHUNK_ERROR_OFFSET,
    CHUNK_NONE,
    CHUNK_OFFSET_DATA,
    CHUNK_OFFSET_HOLE,
    CMD_BLOCK_STATUS,
    CMD_DISC,
    CMD_READ,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    IHAVEOPT,
    INFO_EXPORT,
    NBDMAGIC,
    OPT_GO,
    OPT_REPLY_MAGIC,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_FLAG_ERROR,
    REP_INFO,
    REP_META_CONTEXT,
    REPLY_FLAG_DONE,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    STATE_ZERO,
    STRUCTURED_REPLY_MAGIC,
)
from .base import Extent, merge_extents

__all__ = ["NbdConnection", "NbdDisk"]

log = logging.getLogger(__name__)

#: bounds on what a server may make us hold
MAX_OPTION_REPLY = 64 << 10
MAX_READ = 32 << 20
#: block status is asked for in windows of this size (CDI: 2 GiB)
STATUS_WINDOW = 2 << 30


class NbdConnection:
    """One connection to an export, after the handshake; requests one at a time."""

    def __init__(self, socket_path: str, *, export: str = "", timeout: float = 120.0) -> None:
        self._path = socket_path
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path)
        except OSError as exc:
            sock.close()
            raise SourceUnavailableError(f"cannot connect to the NBD server at {socket_path}: "
                                         f"{exc.strerror or exc}") from exc
        self._sock = sock
        self._handle = 0
        self.structured = False
        self.context_id: int | None = None
        try:
            self.size, self.flags = self._handshake(export.encode())
        except BaseException:
            sock.close()
            raise

    # ------------------------------------------------------------------ wire

    def _recv(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            try:
                k = self._sock.recv_into(view[got:])
            except OSError as exc:
                raise SourceUnavailableError(f"the NBD connection broke: {exc}") from exc
            if k == 0:
                raise SourceUnavailableError("the NBD server closed the connection (did nbdkit "
                                             "exit? its log follows in the error, if any)")
            got += k
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            try:
                k = self._sock.recv_into(view[got:])
            except OSError as exc:
                raise SourceUnavailableError(f"the NBD connection broke: {exc}") from exc
            if k == 0:
                raise SourceUnavailableError("the NBD server closed the connection mid-reply")
            got += k

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise SourceUnavailableError(f"the NBD connection broke: {exc}") from exc

    # ------------------------------------------------------------------ handshake

    def _option(self, opt: int, data: bytes = b"") -> None:
        self._send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def _option_reply(self, opt: int) -> tuple[int, bytes]:
        magic, ropt, rtype, length = struct.unpack(">QIII", self._recv(20))
        if magic != OPT_REPLY_MAGIC or ropt != opt or length > MAX_OPTION_REPLY:
            raise SourceContentError(f"the NBD server answered option {opt} with a malformed "
                                     "reply")
        return rtype, self._recv(length)

    def _handshake(self, export: bytes) -> tuple[int, int]:
        magic, opt_magic, hflags = struct.unpack(">QQH", self._recv(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not hflags & FLAG_FIXED_NEWSTYLE:
            raise SourceContentError(f"{self._path} does not speak the NBD fixed newstyle "
                                     "protocol")
        self._send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (hflags & FLAG_NO_ZEROES)))
        self._option(OPT_STRUCTURED_REPLY)
        rtype, _ = self._option_reply(OPT_STRUCTURED_REPLY)
        self.structured = rtype == REP_ACK
        if self.structured:
            query = b"base:allocation"
            self._option(OPT_SET_META_CONTEXT, struct.pack(">I", len(export)) + export
                         + struct.pack(">II", 1, len(query)) + query)
            while True:
                rtype, data = self._option_reply(OPT_SET_META_CONTEXT)
                if rtype == REP_META_CONTEXT and len(data) >= 4 and data[4:] == query:
                    self.context_id = struct.unpack_from(">I", data)[0]
                elif rtype == REP_ACK or rtype & REP_FLAG_ERROR:
                    break
        self._option(OPT_GO, struct.pack(">I", len(export)) + export + struct.pack(">H", 0))
        size = flags = None
        while True:
            rtype, data = self._option_reply(OPT_GO)
            if rtype == REP_INFO and len(data) >= 12 and struct.unpack_from(">H", data)[0] == \
                    INFO_EXPORT:
                size, flags = struct.unpack_from(">QH", data, 2)
            elif rtype == REP_ACK:
                break
            elif rtype & REP_FLAG_ERROR:
                raise SourceError(f"the NBD server refused the export: "
                                  f"{data.decode('utf-8', 'replace') or hex(rtype)}")
        if size is None or flags is None:
            raise SourceContentError("the NBD server did not say the export's size")
        return size, flags

    # ------------------------------------------------------------------ commands

    def _request(self, cmd: int, offset: int, length: int) -> int:
        self._handle += 1
        self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self._handle, offset, length))
        return self._handle

    def _server_error(self, code: int, what: str, message: bytes = b"") -> SourceError:
        name = errno.errorcode.get(code, str(code))
        text = message.decode("utf-8", "replace")
        return SourceUnavailableError(f"the NBD server failed {what}: {name} "
                                      f"({os.strerror(code) if code in errno.errorcode else ''})"
                                      f"{': ' + text if text else ''}")

    def read(self, offset: int, view: memoryview) -> None:
        """Fill `view` with the export's bytes at `offset` (at most MAX_READ per call)."""
        length = len(view)
        if length > MAX_READ:
            raise ValueError("NBD reads are split by the caller")
        handle = self._request(CMD_READ, offset, length)
        what = f"reading {length} bytes at {offset}"
        while True:
            magic = struct.unpack(">I", self._recv(4))[0]
            if magic == SIMPLE_REPLY_MAGIC:
                code, got = struct.unpack(">IQ", self._recv(12))
                self._check_handle(got, handle)
                if code:
                    raise self._server_error(code, what)
                self._recv_into(view)
                return
            if magic != STRUCTURED_REPLY_MAGIC:
                raise SourceContentError("the NBD server sent a malformed reply")
            flags, ctype, got, plen = struct.unpack(">HHQI", self._recv(16))
            self._check_handle(got, handle)
            if ctype == CHUNK_OFFSET_DATA:
                (at,) = struct.unpack(">Q", self._recv(8))
                n = plen - 8
                if not (offset <= at and at + n <= offset + length and n >= 0):
                    raise SourceContentError("the NBD server sent data outside the request")
                self._recv_into(view[at - offset: at - offset + n])
            elif ctype == CHUNK_OFFSET_HOLE:
                at, n = struct.unpack(">QI", self._recv(12))
                if not (offset <= at and at + n <= offset + length):
                    raise SourceContentError("the NBD server sent a hole outside the request")
                view[at - offset: at - offset + n] = bytes(n)
            elif ctype in (CHUNK_ERROR, CHUNK_ERROR_OFFSET):
                body = self._recv(plen) if plen <= MAX_OPTION_REPLY else b""
                code, mlen = struct.unpack_from(">IH", body)
                raise self._server_error(code, what, body[6: 6 + mlen])
            elif ctype == CHUNK_NONE:
                if plen:
                    self._recv(min(plen, MAX_OPTION_REPLY))
            else:
                raise SourceContentError(f"the NBD server sent an unexpected reply chunk {ctype}")
            if flags & REPLY_FLAG_DONE:
                return

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """The runs of [offset, offset+length) as the server describes them (it may describe
        less than asked: callers continue from the end of the last run)."""
        if self.context_id is None:
            return [Extent(offset, length, False)]
        handle = self._request(CMD_BLOCK_STATUS, offset, min(length, 0xFFFFFFFF))
        runs: list[Extent] = []
        while True:
            magic = struct.unpack(">I", self._recv(4))[0]
            if magic == SIMPLE_REPLY_MAGIC:  # an error (block status always answers structured)
                code, got = struct.unpack(">IQ", self._recv(12))
                raise self._server_error(code, "block status")
            if magic != STRUCTURED_REPLY_MAGIC:
                raise SourceContentError("the NBD server sent a malformed reply")
            flags, ctype, got, plen = struct.unpack(">HHQI", self._recv(16))
            self._check_handle(got, handle)
            if plen > MAX_OPTION_REPLY * 16:
                raise SourceContentError("the NBD server sent an oversized block status reply")
            body = self._recv(plen)
            if ctype == CHUNK_BLOCK_STATUS and len(body) >= 4:
                pos = offset
                for i in range(4, len(body) - 7, 8):
                    n, state = struct.unpack_from(">II", body, i)
                    n = min(n, offset + length - pos)
                    if n <= 0:
                        break
                    runs.append(Extent(pos, n, bool(state & STATE_ZERO)))
                    pos += n
            elif ctype in (CHUNK_ERROR, CHUNK_ERROR_OFFSET):
                code, mlen = struct.unpack_from(">IH", body)
                raise self._server_error(code, "block status", body[6: 6 + mlen])
            if flags & REPLY_FLAG_DONE:
                break
        return runs or [Extent(offset, length, False)]

    @staticmethod
    def _check_handle(got: int, want: int) -> None:
        if got != want:
            raise SourceContentError("the NBD server answered another request")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class NbdDisk:
    """The export as a random-access disk: one connection per reading thread (made on first
    use), and a map from block status. `areas` (a warm stage's changed areas) restricts the map
    to them: the disk is then a delta (`complete` False)."""

    read_unit = 0

    def __init__(self, socket_path: str, *, max_read: int = 8 << 20,
                 areas: Iterable[tuple[int, int]] | None = None) -> None:
        self._path = socket_path
        self._max_read = max(4096, min(max_read, MAX_READ))
        self._local = threading.local()
        self._conns: list[NbdConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        main = self._connection()
        self.size = main.size
        self._areas = None if areas is None else sorted(areas)
        self.complete = self._areas is None

    def _connection(self) -> NbdConnection:
        conn: NbdConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise SourceError("the import was stopped")
            conn = NbdConnection(self._path)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def extents(self) -> Iterator[Extent]:
        spans = [(0, self.size)] if self._areas is None else [
            (max(0, s), min(self.size, s + n)) for s, n in self._areas]
        conn = self._connection()

        def runs() -> Iterator[Extent]:
            for start, end in spans:
                pos = start
                while pos < end:
                    window = min(STATUS_WINDOW, end - pos)
                    got = conn.block_status(pos, window)
                    yield from got
                    pos = got[-1].end
        return merge_extents(runs())

    def readinto_at(self, offset: int, buf: bytearray | memoryview) -> int:
        want = max(0, min(len(buf), self.size - offset))
        view = memoryview(buf)[:want]
        conn = self._connection()
        for pos in range(0, want, self._max_read):
            conn.read(offset + pos, view[pos: pos + min(self._max_read, want - pos)])
        return want

    def close(self) -> None:
        """Close every connection; reads blocked in other threads fail at once."""
        self._closed = True
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()
