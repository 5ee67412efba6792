"""Issue 15: a client that stops reading (a zero receive window) is cut after `write-timeout`
on every streaming transport, and cannot hold SIGTERM past `shutdown-timeout`."""

import socket
import ssl
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from conftest import AUTH

BIG = "x" * 60_000


def stalled_stream(herald, path):
    """Opens a stream on a socket with a tiny receive buffer that it never reads."""
    host, port = herald.url.removeprefix("http://").split(":")
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect((host, int(port)))
    connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return connection


def flood(herald, channel, megabytes=8, **client):
    with herald.client(headers=AUTH, **client) as api:
        for _ in range(megabytes * 1_000_000 // len(BIG)):
            assert api.post(f"/api/v1/channels/{channel}/events", json={"type": "big", "data": BIG}).status_code == 201


def closed_by_server(connection, within):
    """Drains the socket; True when the server closed it before `within` seconds passed."""
    deadline = time.monotonic() + within
    connection.settimeout(2)
    while time.monotonic() < deadline:
        try:
            if not connection.recv(1 << 20):
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


@pytest.mark.parametrize("path", [
    "/api/v1/channels/flood/events?since=0&format=sse",
    "/api/v1/channels/flood/events?since=0&format=ndjson",
    "/api/v1/channels/flood/events?since=0&format=html",
])
def test_a_client_that_stops_reading_is_cut_after_the_write_timeout(make_herald, path):
    # The slow-consumer bounds are out of reach: only the write deadline can cut the stream.
    herald = make_herald(config={"write-timeout": 2, "stream-max-queued-bytes": 1 << 30,
                                 "stream-max-queued-events": 100_000})
    connection = stalled_stream(herald, path)
    time.sleep(0.5)
    flood(herald, "flood")
    time.sleep(4)  # the connection has been unwritable for longer than write-timeout
    with connection:
        assert closed_by_server(connection, within=20), "the stalled stream was never closed"
    with herald.client() as api:
        assert api.get("/healthz").status_code == 200


def test_a_websocket_that_stops_reading_is_cut_after_the_write_timeout(make_herald):
    herald = make_herald(config={"write-timeout": 2, "ws-max-queued-bytes": 1 << 30, "ws-max-queued-frames": 100_000,
                                 "stream-max-queued-bytes": 1 << 30, "stream-max-queued-events": 100_000})
    connection = stalled_stream(herald, "/api/v1/ws")  # refused without the upgrade headers
    connection.close()
    host, port = herald.url.removeprefix("http://").split(":")
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    connection.connect((host, int(port)))
    connection.sendall(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    subscribe = b'{"op":"subscribe","channel":"wsflood","since":0}'
    mask = b"\x01\x02\x03\x04"
    connection.sendall(bytes([0x81, 0x80 | len(subscribe)]) + mask
                       + bytes(byte ^ mask[index % 4] for index, byte in enumerate(subscribe)))
    time.sleep(0.5)
    flood(herald, "wsflood")
    time.sleep(4)
    with connection:
        assert closed_by_server(connection, within=20), "the stalled WebSocket was never closed"


def test_sigterm_ends_the_process_in_bounded_time_with_a_stalled_client(make_herald):
    herald = make_herald(config={"write-timeout": 600, "shutdown-timeout": 2,
                                 "stream-max-queued-bytes": 1 << 30, "stream-max-queued-events": 100_000})
    connection = stalled_stream(herald, "/api/v1/channels/flood/events?since=0&format=sse")
    time.sleep(0.5)
    flood(herald, "flood")
    started = time.monotonic()
    code = herald.terminate(timeout=30)
    elapsed = time.monotonic() - started
    connection.close()
    assert elapsed < 12, f"SIGTERM took {elapsed:.1f} s with shutdown-timeout 2"
    assert code == 0, "".join(herald.output)  # a requested stop, however its clients behaved


@pytest.mark.parametrize("window", ["wide", "closed"])
def test_an_http2_stream_that_is_not_read_is_cut_after_the_write_timeout(make_herald, tmp_path, window):
    """Over TLS and HTTP/2: with a wide flow-control window the connection itself stops
    draining (its TCP receive window closes); with the default 64 KiB window the stream does,
    while the connection stays writable."""
    from test_browser_streams import self_signed_certificate
    cert, key = self_signed_certificate(tmp_path)
    herald = make_herald("--tls-cert", str(cert), "--tls-key", str(key),
                         config={"write-timeout": 2, "stream-max-queued-bytes": 1 << 30,
                                 "stream-max-queued-events": 100_000})
    host, port = herald.url.removeprefix("https://").split(":")
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["h2"])
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect((host, int(port)))
    connection = context.wrap_socket(raw, server_hostname="localhost")
    assert connection.selected_alpn_protocol() == "h2"
    client = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    if window == "wide":
        client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        client.increment_flow_control_window(2**31 - 1 - 65_535)
    client.send_headers(1, [(":method", "GET"), (":path", "/api/v1/channels/h2flood/events?since=0&format=sse"),
                            (":scheme", "https"), (":authority", "localhost")], end_stream=True)
    connection.sendall(client.data_to_send())
    time.sleep(0.5)
    flood(herald, "h2flood", verify=ssl.create_default_context(cafile=str(cert)))
    time.sleep(4)  # the stream has waited longer than write-timeout
    with connection:
        assert stream_cut(connection, client, within=20), "the stalled HTTP/2 stream was never cut"
    with herald.client(verify=ssl.create_default_context(cafile=str(cert))) as api:
        assert api.get("/healthz").status_code == 200


def stream_cut(connection, client, within):
    """Reads HTTP/2 frames (granting no flow-control window) until stream 1 is reset or the
    connection ends; False when neither happens within `within` seconds."""
    deadline = time.monotonic() + within
    connection.settimeout(2)
    while time.monotonic() < deadline:
        try:
            data = connection.recv(1 << 20)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError):
            return True
        if not data:
            return True
        for event in client.receive_data(data):
            if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                return True
        connection.sendall(client.data_to_send())
    return False
