"""Serve an ASGI app with uvicorn in a background thread on a free loopback port, for the browser tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

START_TIMEOUT_S = 30


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Run `app` on 127.0.0.1 for the duration of the block.

    The socket is bound before uvicorn starts (port 0, chosen by the kernel), so no other process can take the port
    between choosing and serving it.

    Yields:
        The base URL, e.g. ``http://127.0.0.1:41235``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="auto"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn:{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start serving on 127.0.0.1:{port} within {START_TIMEOUT_S} s")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT_S)
        sock.close()
