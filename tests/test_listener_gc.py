"""pynetdicom's accept loop forces a full garbage collection every 60th pass; the edge's
server holds it back while an association is open, so no transfer stalls behind it."""

from __future__ import annotations

import gc
import socketserver
import threading
import time

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from edge_listener.front.server import EdgeAssociationServer


def test_the_periodic_full_collection_waits_until_no_association_is_open():
    full_collections: list[float] = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full_collections.append(time.monotonic())

    acceptor = AE(ae_title="ADAPTER")
    acceptor.add_supported_context(Verification)
    server = acceptor.make_server(("127.0.0.1", 0), server_class=EdgeAssociationServer)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.005}, daemon=True)
    requestor = AE(ae_title="SCU")
    requestor.add_requested_context(Verification)
    gc.disable()  # only the collections the accept loop asks for
    gc.callbacks.append(count)
    try:
        loop.start()
        assoc = requestor.associate("127.0.0.1", server.server_address[1], ae_title="ADAPTER")
        assert assoc.is_established
        time.sleep(1.5)  # ~300 passes of the loop: pynetdicom alone would have collected 5 times
        assert assoc.send_c_echo().Status == 0x0000
        assert full_collections == []
        assoc.release()
        deadline = time.monotonic() + 10
        while not full_collections and time.monotonic() < deadline:
            time.sleep(0.05)
        assert full_collections, "no collection once the association had ended"
    finally:
        gc.callbacks.remove(count)
        gc.enable()
        socketserver.BaseServer.shutdown(server)  # pynetdicom's shutdown() wants an AE-started server
        server.server_close()
