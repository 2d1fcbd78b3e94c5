"""An ``http.server`` handler and server for :mod:`pmem_metrics.exposition`.

Kept apart from the rendering: the handler only turns a request's headers
into a call of ``respond(accept, accept_encoding)`` and writes what it
returns; the server is a ``ThreadingHTTPServer`` of the address's family on
a daemon thread.

An endpoint that runs for months meets clients that misbehave: the listen
queue holds :data:`BACKLOG` connections (not ``socketserver``'s 5, which makes
a crowd of clients wait seconds for their SYNs to be sent again), a
connection that sends nothing for :attr:`MetricsHandler.timeout` seconds (an
idle client, half a request) is dropped, freeing its thread, and a client
that goes away (a reset, a broken pipe, a timeout) is one DEBUG line on the
``pmem_metrics`` logger, not a traceback on stderr.  The timeout bounds each
wait for the client, not a whole request: a client that trickles a byte
every few seconds keeps its thread (a reverse proxy in front guards against
that).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol

from .errors import PmemMetricsError

_log = logging.getLogger("pmem_metrics")

BACKLOG = socket.SOMAXCONN
"""The listen queue's length (the kernel caps it at ``net.core.somaxconn``)."""


class Responder(Protocol):
    """What a :class:`MetricsHandler` serves: :class:`pmem_metrics.exposition.Exposition`."""

    def respond(
        self, accept: str | None = None, accept_encoding: str | None = None
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body."""


class MetricsHandler(BaseHTTPRequestHandler):
    """Answers a GET of any path with :attr:`exposition`'s :meth:`~Exposition.respond`.

    A registry that cannot be read (the default one; an unreadable segment
    is ``pmem_segment_up`` 0) is a 500 with the error, logged.  Logs no request.
    """

    exposition: ClassVar[Responder]
    timeout = 5.0
    """Seconds each read or write of the connection may wait for the client: then it is dropped."""

    def do_GET(self) -> None:
        """Serve the exposition."""
        try:
            status, headers, body = self.exposition.respond(
                self.headers.get("Accept"), self.headers.get("Accept-Encoding")
            )
        except (PmemMetricsError, OSError, ValueError) as e:
            _log.error("pmem_metrics: cannot read the counters: %s", e)
            body = f"cannot read the counters: {e}\n".encode()
            status = "500 Internal Server Error"
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            headers.append(("Content-Length", str(len(body))))
        self.send_response(int(status[:3]))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: a scrape every few seconds is no news."""


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer of the given address family that looks no host name up."""

    def __init__(
        self, family: int, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]
    ) -> None:
        self.address_family = family
        super().__init__(address, handler)

    request_queue_size = BACKLOG

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: its getfqdn() may hang
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is no error of the server's: one DEBUG line, no traceback."""
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, socket.timeout)):
            _log.debug("pmem_metrics: a client went away (%s): %s", client_address, e)
        else:
            super().handle_error(request, client_address)


def serve(handler: type[BaseHTTPRequestHandler], port: int, addr: str) -> ThreadingHTTPServer:
    """Serve *handler* on *addr*:*port* (0: any free port) from a daemon thread; the server.

    *addr* may be a name or an IPv4 or IPv6 address: the socket takes the
    family of its first address, as prometheus_client's
    ``start_http_server`` does.  ``OSError`` if it cannot be served there
    (``socket.gaierror`` for a name that does not resolve).
    """
    family, _, _, _, where = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server = _Server(family, (str(where[0]), port), handler)
    threading.Thread(target=server.serve_forever, name="pmem-exposition", daemon=True).start()
    return server
