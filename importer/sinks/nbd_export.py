"""A read-only NBD server over any `read(offset, length)` callable, on socketpairs.

This is how qemu-img reads a remote qcow2/vmdk/vhdx without staging it: the bytes come from our
own sources (with their resume, TLS, auth and checksum rules) through the read-ahead cache, and
qemu-img's concurrent requests (-m) become parallel ranged reads. Written by hand: no
maintained Python library serves NBD from an in-process callback, and nbdkit's curl plugin
serves one request at a time and knows nothing of our sources.

Protocol subset (fixed newstyle handshake): NBD_OPT_GO / INFO / EXPORT_NAME / ABORT / LIST;
structured replies and meta contexts are declined, so qemu uses simple replies; commands READ,
DISC and FLUSH (no-op). Lengths a client sends are bounded.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..nbd_protocol import (
    CMD_DISC,
    CMD_FLUSH,
    CMD_READ,
    FLAG_FIXED_NEWSTYLE,
    FLAG_NO_ZEROES,
    IHAVEOPT,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    NBDMAGIC,
    OPT_ABORT,
    OPT_EXPORT_NAME,
    OPT_GO,
    OPT_INFO,
    OPT_LIST,
    OPT_REPLY_MAGIC,
    REP_ACK,
    REP_ERR_UNSUP,
    REP_INFO,
    REP_SERVER,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    TX_CAN_MULTI_CONN,
    TX_HAS_FLAGS,
    TX_READ_ONLY,
)

__all__ = ["NbdExport"]

log = logging.getLogger(__name__)

EIO, EINVAL, EPERM = 5, 22, 1
MAX_REQUEST = 32 << 20
MAX_OPTION = 64 << 10


class NbdExport:
    """Each client gets one end of a socketpair, inherited as an fd (qemu's `server.type=fd`):
    nothing in the filesystem, so no other local process can connect and nothing is left behind
    when the importer is killed (a socket file in /tmp outlived SIGKILL)."""

    def __init__(self, read: Callable[[int, int], bytes | bytearray | memoryview], size: int, *,
                 workers: int = 8) -> None:
        self._read = read
        self.size = size
        # What the client is told: whole 512-byte sectors, the tail read as zeros (as qemu's own
        # file driver rounds a file up). qemu 7.2's NBD client, given an export whose size is
        # not a multiple of 512 by a server with simple replies only, asks for the short tail
        # but waits for a whole sector of reply, and hangs (CDI's invalid-qcow-large-memory
        # fixture, 65405 bytes, hung qemu-img info for 120 s; nbdkit's structured replies hide it)
        self.export_size = -(-size // 512) * 512
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="nbd")
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.error: BaseException | None = None  # the first read failure, for the real message

    def connect(self) -> socket.socket:
        """A new client connection: the caller hands its fd to the child and then closes it."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            if self._stop.is_set():
                ours.close()
                theirs.close()
                raise OSError(EIO, "the NBD export is closed")
            self._conns.append(ours)
        threading.Thread(target=self._serve, args=(ours,), daemon=True, name="nbd-conn").start()
        return theirs

    # ----------------------------------------------------------------- handshake

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                if self._handshake(conn):
                    self._transmission(conn)
        except (OSError, ConnectionError, EOFError) as exc:
            if not self._stop.is_set():
                log.debug("nbd connection ended: %s", exc)

    def _handshake(self, conn: socket.socket) -> bool:
        conn.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", _recv(conn, 4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        tx_flags = TX_HAS_FLAGS | TX_READ_ONLY | TX_CAN_MULTI_CONN
        while True:
            magic, opt, length = struct.unpack(">QII", _recv(conn, 16))
            if magic != IHAVEOPT or length > MAX_OPTION:
                return False
            _recv(conn, length)  # the option's payload: one export, so names are not looked at
            if opt == OPT_EXPORT_NAME:
                conn.sendall(struct.pack(">QH", self.export_size, tx_flags)
                             + (b"" if no_zeroes else bytes(124)))
                return True
            if opt in (OPT_GO, OPT_INFO):
                info = struct.pack(">HQH", INFO_EXPORT, self.export_size, tx_flags)
                _reply(conn, opt, REP_INFO, info)
                _reply(conn, opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, MAX_REQUEST))
                _reply(conn, opt, REP_ACK)
                if opt == OPT_GO:
                    return True
            elif opt == OPT_LIST:
                _reply(conn, opt, REP_SERVER, struct.pack(">I", 0))
                _reply(conn, opt, REP_ACK)
            elif opt == OPT_ABORT:
                _reply(conn, opt, REP_ACK)
                return False
            else:  # structured replies, meta contexts, TLS: declined
                _reply(conn, opt, REP_ERR_UNSUP)

    # ----------------------------------------------------------------- transmission

    def _transmission(self, conn: socket.socket) -> None:
        wlock = threading.Lock()

        def send(handle: int, error: int, data: bytes | bytearray | memoryview = b"") -> None:
            header = struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle)
            with wlock:  # header and data of one reply must not interleave with another's
                conn.sendall(header)
                if data:
                    conn.sendall(data)  # no concatenation: the data is sent from where it lies

        def do_read(handle: int, offset: int, length: int) -> None:
            try:
                real = max(0, min(length, self.size - offset))
                data = self._read(offset, real) if real else b""
                if len(data) != real:
                    raise OSError(EIO, f"short read at {offset}: {len(data)} of {real}")
                if real < length:  # the zeros that round the export up to a whole sector
                    data = bytes(data) + bytes(length - real)
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
                log.debug("nbd read %d+%d failed: %s", offset, length, exc)
                with contextlib.suppress(OSError):
                    send(handle, EIO)
                return
            with contextlib.suppress(OSError):
                send(handle, 0, data)

        while True:
            magic, _flags, cmd, handle, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
            if magic != REQUEST_MAGIC:
                return
            if cmd == CMD_DISC:
                return
            if cmd == CMD_READ:
                if length > MAX_REQUEST or offset + length > self.export_size:
                    send(handle, EINVAL)
                    continue
                self._pool.submit(do_read, handle, offset, length)
            elif cmd == CMD_FLUSH:
                send(handle, 0)
            else:
                send(handle, EPERM)

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            conns, self._conns = self._conns, []
        for conn in conns:  # shutdown wakes a recv blocked in the serving thread
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._pool.shutdown(wait=False, cancel_futures=True)


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the connection")
        buf += chunk
    return bytes(buf)


def _reply(conn: socket.socket, opt: int, rtype: int, data: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", OPT_REPLY_MAGIC, opt, rtype, len(data)) + data)
