#!/usr/bin/env python3
"""A bare pynetdicom C-STORE receiver: the reference for what the edge adds.

It does the least a durable receiver can do with pynetdicom and nothing else:
``_config.STORE_RECV_CHUNKED_DATASET = True`` makes pynetdicom stream each data set into a
temporary file (file meta + the received bytes, never decoded); the C-STORE handler fsyncs that
file, renames it into ``--dir`` as ``<SOPInstanceUID>.dcm`` and answers 0x0000. No logging
setup, no checks, no events, pynetdicom's defaults everywhere else (max PDU 16382, its standard
log handlers bound, Nagle left on).

    python bench/bare_receiver.py --port 11112 --dir /tmp/out --aet BARE [--quickack] [--fsync-dir]

Prints ``ready`` once it listens; SIGTERM (or SIGINT) stops the server and exits 0.

``--quickack`` re-arms TCP_QUICKACK after every recv() on the association sockets (Linux resets
it by itself), which is what rescues senders that leave Nagle on. ``--fsync-dir`` also fsyncs the
directory after each rename (what the edge's spool does), off by default.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import tempfile
import threading

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
    transport,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

_config.STORE_RECV_CHUNKED_DATASET = True


class QuickAckSocket(transport.AssociationSocket):
    """AssociationSocket that re-arms TCP_QUICKACK after each read (same loop as pynetdicom's)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        assert sock is not None
        bytestream = bytearray()
        nr_read = 0
        while nr_read < nr_bytes:
            bufsize = min(4096, nr_bytes - nr_read)
            chunk = sock.recv(bufsize)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            except OSError:
                pass
            if not chunk:
                return bytestream
            bytestream.extend(chunk)
            nr_read += len(chunk)
        return bytestream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True, help="folder the received instances move into")
    parser.add_argument("--aet", default="BARE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--quickack", action="store_true", help="set TCP_QUICKACK after each recv")
    parser.add_argument("--fsync-dir", action="store_true", help="fsync --dir after each rename")
    args = parser.parse_args(argv)

    out_dir = os.path.abspath(args.dir)
    os.makedirs(out_dir, exist_ok=True)
    # pynetdicom writes the streamed data set with NamedTemporaryFile in the default temp dir;
    # keep it on the same file system as --dir so the move is a rename.
    incoming = os.path.join(out_dir, ".incoming")
    os.makedirs(incoming, exist_ok=True)
    tempfile.tempdir = incoming

    if args.quickack:
        transport.AssociationSocket = QuickAckSocket  # used by RequestHandler for each accept

    def handle_store(event: evt.Event) -> int:
        src = event.dataset_path  # already flushed to the OS after every PDV by pynetdicom
        fd = os.open(src, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        uid = str(event.request.AffectedSOPInstanceUID or "")
        name = uid if uid and all(c.isdigit() or c == "." for c in uid) else os.path.basename(src)
        os.rename(src, os.path.join(out_dir, name + ".dcm"))
        if args.fsync_dir:
            dfd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return 0x0000

    ae = AE(ae_title=args.aet)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)

    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = ae.start_server(
        (args.host, args.port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)]
    )
    print(f"ready: bare pynetdicom receiver {args.aet} on {args.host}:{args.port}", flush=True)
    while not stop.wait(0.5):
        pass
    assert server is not None
    server.shutdown()
    ae.shutdown()
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
