"""Server-Sent Events with a third-party client (httpx-sse): snapshot, resume, loss, heartbeat, drain."""

import json
import threading
import time

import httpx
from httpx_sse import connect_sse

from conftest import AUTH, create


def events_of(herald, path, headers=None, params=None, until=None, timeout=30):
    """Reads SSE messages until the stream ends or `until(received)` is true."""
    received = []
    with httpx.Client(base_url=herald.url, timeout=timeout) as client:
        with connect_sse(client, "GET", path, headers=headers or {}, params=params) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            for message in source.iter_sse():
                if message.data == "" and message.event == "message":
                    continue  # a block with only retry: dispatches nothing in EventSource
                received.append(message)
                if until and until(received):
                    break
    return received


def publish(api, channel, n, start=0):
    return [api.post(f"/api/v1/channels/{channel}/events", json={"type": "t", "data": {"n": i}},
                     headers=AUTH).json() for i in range(start, start + n)]


def test_a_check_stream_starts_with_the_snapshot_and_ends_after_the_terminal_event(herald, api):
    check = create(api, {"kind": "delay", "params": {"ms": 500, "result": "r"}}).json()
    messages = events_of(herald, f"/api/v1/checks/{check['id']}/events")
    assert [m.event for m in messages] == ["check.created", "check.done"]
    epoch = json.loads(messages[0].data)["epoch"]
    assert [m.id for m in messages] == [f"{epoch}:1", f"{epoch}:2"]
    assert json.loads(messages[-1].data)["data"]["result"] == "r"
    # A reconnect after the end gets 204, which stops EventSource.
    again = api.get(f"/api/v1/checks/{check['id']}/events",
                    headers={"Accept": "text/event-stream", "Last-Event-ID": messages[-1].id})
    assert again.status_code == 204


def test_an_ended_check_streams_its_snapshot_then_ends(herald, api):
    check = create(api, {"kind": "external"}).json()
    api.post(f"/api/v1/checks/{check['id']}/complete", json={"state": "failed"}, headers=AUTH)
    messages = events_of(herald, f"/api/v1/checks/{check['id']}/events", params={"format": "sse"})
    assert [m.event for m in messages] == ["check.failed"]


def test_a_channel_stream_resumes_from_last_event_id_without_gap_or_duplicate(herald, api):
    first = publish(api, "feed", 5)
    resume_id = f"{first[1]['epoch']}:{first[1]['offset']}"
    done = threading.Event()
    result = {}

    def read():
        result["messages"] = events_of(herald, "/api/v1/channels/feed/events",
                                       headers={"Accept": "text/event-stream", "Last-Event-ID": resume_id},
                                       until=lambda got: len(got) >= 8)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    publish(api, "feed", 5, start=5)
    assert done.wait(30)
    offsets = [json.loads(m.data)["offset"] for m in result["messages"]]
    assert offsets == list(range(3, 11))
    assert [json.loads(m.data)["data"]["n"] for m in result["messages"]] == list(range(2, 10))


def test_a_lost_position_is_announced_then_the_kept_events_follow(make_herald):
    herald = make_herald(config={"history-max-events": 3})
    with herald.client() as api:
        publish(api, "short", 6)
        messages = events_of(herald, "/api/v1/channels/short/events", headers={"Accept": "text/event-stream"},
                             params={"since": 1}, until=lambda got: len(got) >= 4)
    assert messages[0].event == "herald.reset" and json.loads(messages[0].data)["recovered"] is False
    assert [json.loads(m.data)["offset"] for m in messages[1:]] == [4, 5, 6]


def test_live_events_arrive_in_order_exactly_once(herald, api):
    done = threading.Event()
    result = {}

    def read():
        result["messages"] = events_of(herald, "/api/v1/channels/burst/events", headers={"Accept": "text/event-stream"},
                                       until=lambda got: len(got) >= 300)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    time.sleep(0.5)
    publish(api, "burst", 300)
    assert done.wait(60)
    assert [json.loads(m.data)["data"]["n"] for m in result["messages"]] == list(range(300))


def test_an_idle_stream_gets_heartbeat_comments(make_herald):
    herald = make_herald("--heartbeat", "1")
    with httpx.Client(base_url=herald.url, timeout=10) as client:
        with client.stream("GET", "/api/v1/channels/quiet/events", params={"format": "sse"}) as response:
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                if line.startswith(":"):
                    break
    assert lines[0] == "retry: 2000" and lines[-1].startswith(":")


def test_sigterm_ends_streams_and_a_resumed_stream_misses_nothing(make_herald):
    herald = make_herald()
    with herald.client() as api:
        publish(api, "durable", 3)
    got = []
    with httpx.Client(base_url=herald.url, timeout=30) as client:
        with connect_sse(client, "GET", "/api/v1/channels/durable/events", params={"since": 0}) as source:
            for message in source.iter_sse():
                if message.data == "":
                    continue
                got.append(message)
                if len(got) == 3:
                    herald.proc.send_signal(__import__("signal").SIGTERM)
            # the stream ended because the server drained
    assert herald.proc.wait(timeout=30) == 0
    herald.start()
    with herald.client() as api:
        publish(api, "durable", 2, start=3)
    resumed = events_of(herald, "/api/v1/channels/durable/events",
                        headers={"Accept": "text/event-stream", "Last-Event-ID": got[-1].id},
                        until=lambda messages: len(messages) >= 2)
    assert [json.loads(m.data)["offset"] for m in resumed] == [4, 5]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def test_a_reader_that_never_reads_is_cut_off_and_server_memory_stays_bounded(make_herald):
    # The queue bound is under test, not the write deadline (test_slow_clients.py): the flood
    # takes longer than write-timeout's 30 s here, so it is set out of the way.
    herald = make_herald(config={"write-timeout": 600})
    import base64
    import os
    import socket
    host, port = herald.url.removeprefix("http://").split(":")
    reader = socket.create_connection((host, int(port)))
    reader.sendall(b"GET /api/v1/channels/flood/events?format=sse HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.5)
    before = rss_kib(herald.proc.pid)
    payload = base64.b64encode(os.urandom(3000)).decode()  # 4 KB per event
    with httpx.Client(base_url=herald.url, headers=AUTH, timeout=30) as client:
        for n in range(15000):  # ~60 MB published while the reader reads nothing
            client.post("/api/v1/channels/flood/events", json={"type": "t", "data": payload})
    grown_mib = (rss_kib(herald.proc.pid) - before) / 1024
    # An unbounded queue would hold all ~60 MB for this one reader; the bound is 1,024 events or 1 MiB.
    assert grown_mib < 40, grown_mib
    # The server cut the stream: reading now drains what was in flight, then meets the end of the
    # chunked body (the connection itself stays open for keep-alive).
    reader.settimeout(20)
    received = b""
    while not received.endswith(b"\r\n0\r\n\r\n"):
        chunk = reader.recv(65536)
        assert chunk, "the connection closed before the stream ended"
        received += chunk
    reader.close()
    assert 0 < received.count(b"\nevent: t\n") < 15000


def test_an_sse_stream_over_tls_http1_is_a_valid_chunked_body(make_herald, tmp_path):
    # A stream that opens its connection is served on the event loop, its events written as
    # ready-made HTTP/1.1 chunks below the encoder; over TLS they pass through NIO's TLS handler.
    import socket
    import ssl
    from test_browser_streams import self_signed_certificate
    cert, key = self_signed_certificate(tmp_path)
    herald = make_herald("--tls-cert", str(cert), "--tls-key", str(key))
    context = ssl.create_default_context(cafile=str(cert))
    context.set_alpn_protocols(["http/1.1"])
    with herald.client(verify=context) as api:
        publish(api, "secure-sse", 1)
        host, port = herald.url.removeprefix("https://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as tcp:
            with context.wrap_socket(tcp, server_hostname=host) as tls:
                tls.sendall(b"GET /api/v1/channels/secure-sse/events?format=sse&since=0 HTTP/1.1\r\n"
                            b"Host: localhost\r\n\r\n")
                wire = b""

                def body():
                    head, _, rest = wire.partition(b"\r\n\r\n")
                    data = b""
                    while b"\r\n" in rest:
                        size, _, rest = rest.partition(b"\r\n")
                        size = int(size, 16)
                        if len(rest) < size + 2:
                            break
                        assert rest[size:size + 2] == b"\r\n", wire
                        data, rest = data + rest[:size], rest[size + 2:]
                    return head, data

                while body()[1].count(b"\nevent: t\n") < 1:
                    wire += tls.recv(65536)
                publish(api, "secure-sse", 1, start=1)
                while body()[1].count(b"\nevent: t\n") < 2:
                    wire += tls.recv(65536)
    head, data = body()
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    assert data.startswith(b"retry: 2000\n\n")
    assert [line.rsplit(b":", 1)[1] for line in data.split(b"\n") if line.startswith(b"id: ")] == [b"1", b"2"]
