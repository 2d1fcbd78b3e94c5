"""The Prometheus endpoint's server (pmem_metrics._httpd) among clients that misbehave.

Idle clients and half requests are dropped after the server's timeout, clients
that go away leave no traceback, a scrape gets through meanwhile, and the
listen queue holds a crowd.  Everything on 127.0.0.1; every count fixed, every
wait a hang guard.
"""

from __future__ import annotations

import errno
import resource
import select
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pmem_metrics import exposition

from .test_export import PATIENCE, Exporter, make_segment, scrape

IDLE = 300
"""Idle clients at once: many more than a listen backlog of 5 holds, or threads should wait on."""

GONE = 20
"""Clients that go away half way through a request line, with a reset."""

QUEUED = 128
"""Connections the listen queue must hold while the server accepts none."""


@pytest.fixture
def descriptors() -> Iterator[None]:
    """Room for the test's sockets: the soft limit on descriptors raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * IDLE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"needs {wanted} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def reset(sock: socket.socket) -> None:
    """Close *sock* with a reset (RST), as a client that crashed or gave up does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def dropped(sock: socket.socket) -> bool:
    """Whether the server closed *sock* (end of file or reset) within PATIENCE, without a reply."""
    sock.settimeout(PATIENCE)
    try:
        return sock.recv(1 << 16) == b""
    except ConnectionResetError:
        return True


@pytest.mark.heavy
@pytest.mark.usefixtures("descriptors")
def test_idle_clients_and_half_requests_are_dropped_and_a_scrape_gets_through(
    tmp_path: Path,
) -> None:
    seg = tmp_path / "seg"
    make_segment(seg, drv0=3)
    exporter = Exporter(tmp_path, "--shm", str(seg), "--prometheus-port", "0")
    try:
        url = exporter.url()
        where = urlsplit(url)
        address = (where.hostname, where.port)
        for _ in range(GONE):  # half a request line, then gone
            sock = socket.create_connection(address, timeout=PATIENCE)
            sock.sendall(b"GET /met")
            reset(sock)
        with ExitStack() as stack:
            idle = []
            for i in range(IDLE):
                sock = stack.enter_context(socket.create_connection(address, timeout=PATIENCE))
                if i % 3 == 1:
                    sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # no headers' end
                elif i % 3 == 2:
                    sock.sendall(b"GET /metr")  # half a request line
                idle.append(sock)
            # All of them open: a scrape still gets its page.
            assert scrape(url) == ({(str(seg), "drv0"): 3.0}, {str(seg): 1.0})
            assert all(dropped(sock) for sock in idle)
        assert scrape(url) == ({(str(seg), "drv0"): 3.0}, {str(seg): 1.0})
    finally:
        rc, err = exporter.stop()
    assert rc == 130, err
    assert "Traceback" not in "".join(exporter.stderr), exporter.stderr
    assert exporter.stderr[1:] == [exporter.stderr[-1]], exporter.stderr  # then the summary


@pytest.mark.usefixtures("descriptors")
def test_the_listen_queue_holds_a_crowd_while_no_connection_is_accepted() -> None:
    server = exposition.start_http_server(0, "127.0.0.1")
    server.shutdown()  # accepts nothing from now on; the socket still listens
    address = server.server_address[:2]
    with ExitStack() as stack:
        stack.callback(server.server_close)
        waiting: list[socket.socket] = []
        for _ in range(QUEUED):
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            assert sock.connect_ex(address) in (0, errno.EINPROGRESS)
            waiting.append(sock)
        # The kernel completes a connection only while the listen queue has room for it.
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in waiting}
        for fd in by_fd:
            poller.register(fd, select.POLLOUT)
        deadline = time.monotonic() + PATIENCE
        while by_fd:
            assert time.monotonic() < deadline, f"{len(by_fd)} connections never completed"
            for fd, _ in poller.poll(100):
                assert by_fd.pop(fd).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                poller.unregister(fd)
