"""The NBD protocol's numbers (the spec's NBD_* constants), shared by our client
(disks/nbd.py, reading nbdkit) and our read-only export (sinks/nbd_export.py, serving qemu-img).
Bounds on lengths are each side's own policy and stay there."""

from __future__ import annotations

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
#: handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
#: options
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 8, 10
#: option replies
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
#: transmission flags
TX_HAS_FLAGS, TX_READ_ONLY, TX_CAN_MULTI_CONN = 1, 2, 1 << 8
#: commands
CMD_READ, CMD_DISC, CMD_FLUSH, CMD_BLOCK_STATUS = 0, 2, 3, 7
#: structured reply chunks
CHUNK_NONE, CHUNK_OFFSET_DATA, CHUNK_OFFSET_HOLE, CHUNK_BLOCK_STATUS = 0, 1, 2, 5
CHUNK_ERROR, CHUNK_ERROR_OFFSET = (1 << 15) + 1, (1 << 15) + 2
REPLY_FLAG_DONE = 1
#: base:allocation states
STATE_HOLE, STATE_ZERO = 1, 2
