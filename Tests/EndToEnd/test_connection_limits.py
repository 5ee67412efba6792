"""Issue 15: running out of file descriptors is not a crash. Herald raises its open-file limit
at start, holds at most `max-connections` client connections, and refuses the next one with a
503 problem document instead of dying."""

import contextlib
import resource
import socket
import ssl
import time

import pytest

from conftest import wait_for


def connect(herald, timeout=10):
    host, port = herald.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def get(connection, path):
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return connection.recv(65536)


def test_a_connection_past_max_connections_is_a_503_not_a_crash(make_herald):
    herald = make_herald(config={"max-connections": 20})
    assert any("at most 20 connections" in line for line in herald.output), "".join(herald.output)
    with contextlib.ExitStack() as held:
        idle = [held.enter_context(connect(herald)) for _ in range(20)]
        for connection in idle[:3]:
            assert get(connection, "/healthz").startswith(b"HTTP/1.1 200")
        with connect(herald) as refused:
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                refused.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                while chunk := refused.recv(65536):
                    answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), answer
        assert b"retry-after: 1" in head.lower() and b"application/problem+json" in head.lower()
        assert b'"code":"unavailable"' in body
        for connection in idle[:5]:
            connection.close()

        def served():
            with connect(herald) as fresh:
                return get(fresh, "/healthz").startswith(b"HTTP/1.1 200")
        assert wait_for(served, timeout=10)
    assert herald.proc.poll() is None


def test_with_tls_a_connection_past_max_connections_is_closed_not_a_crash(make_herald, tmp_path):
    from test_browser_streams import self_signed_certificate
    cert, key = self_signed_certificate(tmp_path)
    herald = make_herald("--tls-cert", str(cert), "--tls-key", str(key), config={"max-connections": 5})
    host, port = herald.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(cert))

    def tls():
        return context.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname="localhost")

    def healthy(connection):
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return connection.recv(65536).startswith(b"HTTP/1.1 200")
    with contextlib.ExitStack() as held:
        idle = [held.enter_context(tls()) for _ in range(5)]
        assert healthy(idle[0])
        # Past the bound a TLS connection is closed before its handshake: no 503 can be read there.
        with pytest.raises(OSError):  # an EOF or a reset during the handshake
            tls().close()
        idle[1].close()

        def served():
            with tls() as fresh:
                return healthy(fresh)
        assert wait_for(lambda: _quietly(served), timeout=10)
    assert herald.proc.poll() is None


def _quietly(attempt):
    """`attempt()`, or False when the connection is refused or reset meanwhile."""
    try:
        return attempt()
    except OSError:
        return False


def lower_soft_file_limit():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))


def open_file_limits(pid):
    with open(f"/proc/{pid}/limits") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_the_open_file_limit_is_raised_so_many_idle_streams_are_served(make_herald):
    herald = make_herald(preexec=lower_soft_file_limit)
    soft, hard = open_file_limits(herald.proc.pid)
    assert soft == hard, (soft, hard)
    # More streams than the soft limit the process was started with: without the raise the
    # accept loop runs out of descriptors at about 250.
    _, own_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(own_hard, 4096), own_hard))
    with contextlib.ExitStack() as held:
        streams = [held.enter_context(connect(herald, timeout=20)) for _ in range(400)]
        for index, stream in enumerate(streams):
            stream.sendall(f"GET /api/v1/channels/idle{index % 7}/events?format=sse HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        deadline = time.monotonic() + 30
        for stream in streams:
            stream.settimeout(max(deadline - time.monotonic(), 1))
            assert stream.recv(65536).startswith(b"HTTP/1.1 200")
        with herald.client() as api:
            assert api.get("/healthz").status_code == 200
    assert herald.proc.poll() is None
