"""Issue 15: no input crashes Herald. Each test sends what once killed the process, then checks
that the answer is the documented one and that the server is still alive."""

import pytest

from conftest import AUTH, assert_problem, create


@pytest.fixture
def quick(make_herald):
    """A server whose long polls hold at most one second."""
    return make_herald(config={"max-wait": 1})


def alive(herald):
    with herald.client() as api:
        assert api.get("/healthz").status_code == 200
    assert herald.proc.poll() is None, "the server died"


@pytest.mark.parametrize("wait", ["1e300", "9300000000000000", "9223372036854775.807", "1.7976931348623157e308"])
def test_a_huge_wait_is_capped_not_a_crash(quick, wait):
    with quick.client() as api:
        check = create(api, {"kind": "external"}).json()
        channel = api.get("/api/v1/channels/x/events", params={"wait": wait, "since": 0})
        assert channel.status_code == 200 and channel.json()["events"] == []
        preferred = api.get("/api/v1/channels/x/events?since=0", headers={"Prefer": f"wait={wait}"})
        assert preferred.status_code == 200
        polled = api.get(f"/api/v1/checks/{check['id']}", params={"wait": wait},
                         headers={"If-None-Match": '"1"'})
        assert polled.status_code == 200 and polled.json()["state"] == "processing"
    alive(quick)


@pytest.mark.parametrize("wait", ["-1", "nan", "inf", "-inf", "1e", "0x10", ""])
def test_a_wait_that_is_not_a_number_of_seconds_is_refused(quick, wait):
    with quick.client() as api:
        assert_problem(api.get("/api/v1/channels/x/events", params={"wait": wait}), 422, "wait")
    alive(quick)


@pytest.mark.parametrize("since", ["9223372036854775807", "9223372036854775808", "-1", "1e3", "18446744073709551616"])
def test_extreme_offsets_are_answered_not_a_crash(quick, since):
    with quick.client() as api:
        api.post("/api/v1/channels/x/events", json={"type": "t", "data": 1}, headers=AUTH)
        answer = api.get("/api/v1/channels/x/events", params={"since": since, "wait": 1})
        assert answer.status_code in (200, 422), answer.text
        if answer.status_code == 200:
            assert answer.json()["recovered"] is False
        for fmt in ("sse", "ndjson"):
            with api.stream("GET", "/api/v1/channels/x/events", params={"since": since, "format": fmt}) as stream:
                assert stream.status_code in (200, 422)
    alive(quick)


# --- WebSocket hygiene -----------------------------------------------------------------------

import asyncio  # noqa: E402
import base64  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402

import websockets  # noqa: E402


def ws_url(herald):
    return herald.url.replace("http://", "ws://") + "/api/v1/ws"


def raw_websocket(herald):
    """A WebSocket opened by hand (no extension), to send frames no library would."""
    host, port = herald.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=20)
    key = base64.b64encode(os.urandom(16)).decode()
    connection.sendall((f"GET /api/v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += connection.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return connection


def frame(opcode, payload, masked=True):
    header = bytes([0x80 | opcode])
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header += bytes([mask_bit | length])
    else:
        header += bytes([mask_bit | 126]) + struct.pack("!H", length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def close_code(connection):
    """Reads frames until the server's close frame; returns its code."""
    buffer = b""
    while True:
        chunk = connection.recv(4096)
        assert chunk, "closed without a close frame"
        buffer += chunk
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if length == 126:
                length, start = struct.unpack("!H", buffer[2:4])[0], 4
            if len(buffer) < start + length:
                break
            payload, buffer = buffer[start:start + length], buffer[start + length:]
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0]


def test_a_text_frame_with_invalid_utf8_closes_with_1007(herald):
    with raw_websocket(herald) as connection:
        connection.sendall(frame(0x1, b'{"op": "ping", "id": "\xff\xfe"}'))
        assert close_code(connection) == 1007
    alive(herald)


@pytest.mark.parametrize("opcode, payload", [(0x1, b'{"op": "ping", "id": 1}'), (0x9, b"ping"),
                                             (0x8, struct.pack("!H", 1000))], ids=["text", "ping", "close"])
def test_an_unmasked_client_frame_closes_with_1002(herald, opcode, payload):
    with raw_websocket(herald) as connection:
        connection.sendall(frame(opcode, payload, masked=False))
        assert close_code(connection) == 1002
    alive(herald)


@pytest.mark.parametrize("code, answer", [(1005, 1002), (999, 1002), (1000, 1000), (4000, 4000)])
def test_a_client_close_is_checked_then_echoed(herald, code, answer):
    with raw_websocket(herald) as connection:
        connection.sendall(frame(0x8, struct.pack("!H", code)))
        assert close_code(connection) == answer
    alive(herald)


def test_an_offer_naming_the_server_window_is_accepted_by_naming_it_back(herald):
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    async def scenario():
        offer = ClientPerMessageDeflateFactory(server_max_window_bits=15, client_max_window_bits=True)
        async with websockets.connect(ws_url(herald), extensions=[offer]) as ws:
            assert [extension.name for extension in ws.protocol.extensions] == ["permessage-deflate"]
            await ws.send(json.dumps({"op": "ping", "id": "y" * 1000}))  # compressed both ways
            answer = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert answer == {"op": "pong", "id": "y" * 1000}
    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_deflated_messages_are_accepted_up_to_the_limit_and_closed_with_1009_beyond(herald):
    async def scenario():
        async with websockets.connect(ws_url(herald), max_size=None) as ws:
            assert [extension.name for extension in ws.protocol.extensions] == ["permessage-deflate"]
            # 60 KiB of ping, well over the library's 16 KiB default, under the 64 KiB setting.
            await ws.send(json.dumps({"op": "ping", "id": "x" * 60_000}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert answer["op"] == "pong" and len(answer["id"]) == 60_000
            await ws.send(json.dumps({"op": "ping", "id": "x" * 70_000}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 20)
            assert closed.value.rcvd.code == 1009
    asyncio.run(asyncio.wait_for(scenario(), 60))
    alive(herald)


def test_pipelined_unsubscribe_and_subscribe_never_duplicate_or_leak(herald, api):
    """Each subscribe gets exactly one answer; after the last, one follower delivers each event once."""
    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            ops = []
            for index in range(200):
                ops.append({"op": "subscribe", "channel": "race", "since": 0, "id": f"s{index}"})
                ops.append({"op": "unsubscribe", "channel": "race", "id": f"u{index}"})
            ops.append({"op": "subscribe", "channel": "race", "id": "last"})
            for op in ops:
                await ws.send(json.dumps(op))
            answered = {}
            while "last" not in answered:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if "id" in message:
                    assert message["id"] not in answered, message
                    answered[message["id"]] = message
            assert len(answered) == len(ops)
            assert all(answered[f"u{i}"]["op"] == "unsubscribed" for i in range(200))
            assert all(answered[f"s{i}"]["op"] in ("subscribed", "error") for i in range(200))
            for n in range(3):
                api.post("/api/v1/channels/race/events", json={"type": "t", "data": n}, headers=AUTH)
            offsets = []
            while len(offsets) < 3:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if message["op"] == "event":
                    offsets.append(message["offset"])
            await ws.send(json.dumps({"op": "ping", "id": "p"}))
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if message.get("id") == "p":
                    break
                assert message["op"] != "event", f"a duplicate: {message}"
            assert offsets == [1, 2, 3]
    asyncio.run(asyncio.wait_for(scenario(), 60))


# --- HTTP framing -----------------------------------------------------------------------------

def raw_exchange(herald, request, timeout=15):
    """Sends raw bytes; returns everything the server answers until it closes or goes quiet."""
    host, port = herald.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except socket.timeout:
            pass
        return answer


@pytest.mark.parametrize("body, encoding", [
    (b"zz\r\n{}\r\n0\r\n\r\n", b"chunked"),
    (b"fffffffffffffffffff\r\n{}\r\n0\r\n\r\n", b"chunked"),
    (b'{"kind":"external"}', b"gzip"),
])
def test_broken_chunked_framing_is_a_400_problem(herald, body, encoding):
    answer = raw_exchange(herald, b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Transfer-Encoding: " + encoding + b"\r\n\r\n" + body, timeout=5)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 400 Bad Request", answer[:300]
    assert b"application/problem+json" in answer
    assert b" 500 " not in answer
    alive(herald)
    with herald.client() as api:
        assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def read_text_frames(connection, timeout=30):
    """Reads server frames until the close frame: returns (texts, close code)."""
    connection.settimeout(timeout)
    buffer, texts = b"", []
    while True:
        chunk = connection.recv(1 << 16)
        assert chunk, "closed without a close frame"
        buffer += chunk
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, start = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, start = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < start + length:
                break
            payload, buffer = buffer[start:start + length], buffer[start + length:]
            if opcode == 0x8:
                return texts, struct.unpack("!H", payload[:2])[0]
            if opcode == 0x1:
                texts.append(json.loads(payload))


def test_a_websocket_that_never_reads_is_cut_by_the_bytes_it_queued(make_herald):
    """400 events of 60 KB fit the frame bound (1,024) but not the byte bound (1 MiB): the
    client that stops reading gets what the socket buffers held, then slow_consumer and 1008."""
    herald = make_herald(config={"stream-max-queued-bytes": 64 << 20})
    with raw_websocket(herald) as connection, herald.client() as api:
        connection.sendall(frame(0x1, b'{"op": "subscribe", "channel": "big", "id": 1}'))
        blob = "x" * 60_000
        for n in range(400):
            assert api.post("/api/v1/channels/big/events", json={"type": "t", "data": blob},
                            headers=AUTH).status_code == 201
        texts, code = read_text_frames(connection)
    events = [text for text in texts if text["op"] == "event"]
    assert texts[-1]["op"] == "error" and texts[-1]["code"] == "slow_consumer", texts[-1]
    assert code == 1008
    assert len(events) < 400
    assert [event["offset"] for event in events] == list(range(1, len(events) + 1))
    alive(herald)


# --- where the OpenAPI document and the server once disagreed ----------------------------------

@pytest.mark.parametrize("query", ["welcome=yes", "welcome=", "tag=", "tag=a%20b", "heartbeat=0", "heartbeat=x"])
def test_stream_options_are_refused_on_polls_too(herald, query):
    with herald.client() as api:
        assert_problem(api.get(f"/api/v1/channels/x/events?since=0&{query}"), 422)
        assert api.get("/api/v1/channels/x/events?since=0&welcome=0&tag=t&heartbeat=5").status_code == 200


@pytest.mark.parametrize("path, key", [("/api/v1/checks", "checks"), ("/api/v1/subscription", "subscriptions"),
                                       ("/api/v1/deliveries", "deliveries")])
def test_an_empty_cursor_is_the_first_page(herald, path, key):
    with herald.client(headers=AUTH) as api:
        create(api, {"kind": "external"})
        first = api.get(path)
        empty = api.get(path + "?cursor=")
        assert empty.status_code == 200, empty.text
        assert empty.json()[key] == first.json()[key]
