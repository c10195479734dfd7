"""Local ports and HTTP probes."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlsplit

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that this process has not
    handed out before: the server it went to may not have bound it yet."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def answers_ok(url: str, *, timeout_s: float = 1.0) -> bool:
    """Whether a GET of the http `url` is answered 200. Asks no proxy, whatever the environment
    says: the servers probed are local."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout_s)
    try:
        connection.request("GET", parts.path or "/")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
