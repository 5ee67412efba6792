"""The /api/v1/ws protocol with the Python `websockets` client."""

import asyncio
import base64
import json
import os
import signal

import httpx
import pytest
import websockets
from httpx_sse import connect_sse

from conftest import API_KEY, AUTH, create
from test_sse import publish


def ws_url(herald):
    return herald.url.replace("http://", "ws://") + "/api/v1/ws"


async def recv(ws, timeout=20):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_op(ws, op, timeout=20):
    while True:
        frame = await recv(ws, timeout)
        if frame["op"] == op:
            return frame


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_ping_and_bad_messages_are_answered_without_a_disconnect(herald):
    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            assert [extension.name for extension in ws.protocol.extensions] == ["permessage-deflate"]
            await ws.send(json.dumps({"op": "ping", "id": 4}))
            assert await recv(ws) == {"op": "pong", "id": 4}
            await ws.send("{not json")
            assert (await recv(ws))["code"] == "malformed"
            await ws.send(json.dumps({"op": "fly", "id": "x"}))
            error = await recv(ws)
            assert error["op"] == "error" and error["code"] == "unknown_op" and error["id"] == "x"
            await ws.send(json.dumps({"op": "subscribe", "channel": "bad name", "id": 5}))
            assert (await recv(ws))["code"] == "invalid"
            await ws.send(json.dumps({"op": "unsubscribe", "channel": "never", "id": 6}))
            assert (await recv(ws))["code"] == "not_subscribed"
            await ws.send(json.dumps({"op": "ping", "id": 7}))
            assert await recv(ws) == {"op": "pong", "id": 7}
    run(scenario())


def test_many_channels_on_one_connection_and_unsubscribe(herald, api):
    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            for index, channel in enumerate(["a", "b"]):
                await ws.send(json.dumps({"op": "subscribe", "channel": channel, "id": index}))
                assert (await recv(ws))["op"] == "subscribed"
            publish(api, "a", 1)
            publish(api, "b", 1)
            got = {(await recv(ws))["channel"], (await recv(ws))["channel"]}
            assert got == {"a", "b"}
            await ws.send(json.dumps({"op": "unsubscribe", "channel": "a", "id": 9}))
            assert await recv(ws) == {"op": "unsubscribed", "channel": "a", "id": 9}
            publish(api, "a", 1, start=1)
            publish(api, "b", 1, start=1)
            frame = await recv(ws)
            assert frame["channel"] == "b" and frame["offset"] == 2
    run(scenario())


def test_subscribe_resumes_from_an_offset_and_reports_a_lost_epoch(herald, api):
    events = publish(api, "resume", 4)
    epoch = events[0]["epoch"]

    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "resume", "since": 2, "epoch": epoch, "id": 1}))
            subscribed = await recv(ws)
            assert subscribed["recovered"] is True and subscribed["epoch"] == epoch and subscribed["id"] == 1
            assert [(await recv(ws))["offset"] for _ in range(2)] == [3, 4]
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "resume", "since": 2, "epoch": "stale"}))
            subscribed = await recv(ws)
            assert subscribed["recovered"] is False and subscribed["epoch"] == epoch
            assert [(await recv(ws))["offset"] for _ in range(4)] == [1, 2, 3, 4]
    run(scenario())


def test_create_check_then_watch_it_on_the_same_connection(herald):
    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "create_check", "check": {"kind": "delay", "params": {"ms": 300}}, "id": 1}))
            created = await recv(ws)
            assert created["op"] == "created" and created["id"] == 1 and created["check"]["state"] == "processing"
            channel = "check:" + created["check"]["id"]
            await ws.send(json.dumps({"op": "subscribe", "channel": channel, "id": 2}))
            assert (await recv(ws))["op"] == "subscribed"
            types = []
            while not types or types[-1] != "check.done":
                types.append((await recv(ws))["type"])
            assert types[-1] == "check.done"
            await ws.send(json.dumps({"op": "create_check", "check": {"kind": "sleep"}, "id": 3}))
            error = await recv(ws)
            assert error["code"] == "invalid" and "sleep" in error["message"] and error["id"] == 3
    run(scenario())


def test_the_origin_allow_list(make_herald):
    herald = make_herald(config={"ws-allowed-origins": "https://app.example"})

    async def scenario():
        async with websockets.connect(ws_url(herald), origin="https://app.example") as ws:
            await ws.send(json.dumps({"op": "ping"}))
            assert (await recv(ws))["op"] == "pong"
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(ws_url(herald), origin="https://evil.example"):
                pass
        # The handshake is refused with the reason as a problem document: no frame is ever read.
        response = refused.value.response
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        problem = json.loads(response.body)
        assert problem["code"] == "origin-refused" and "evil.example" in problem["detail"]
    run(scenario())


def test_an_upgrade_to_another_path_is_refused_with_a_problem(herald):
    async def scenario():
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(herald.url.replace("http://", "ws://") + "/api/v1/checks"):
                pass
        response = refused.value.response
        assert response.status_code == 404
        assert json.loads(response.body)["code"] == "not-found"
    run(scenario())


def test_websocket_over_tls_on_the_http_port(make_herald, tmp_path):
    import ssl
    from test_browser_streams import self_signed_certificate
    cert, key = self_signed_certificate(tmp_path)
    herald = make_herald("--tls-cert", str(cert), "--tls-key", str(key))
    context = ssl.create_default_context(cafile=str(cert))

    async def scenario():
        url = herald.url.replace("https://", "wss://") + "/api/v1/ws"
        async with websockets.connect(url, ssl=context) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "secure", "id": 1}))
            assert (await recv(ws))["op"] == "subscribed"
            with herald.client(verify=context) as api:
                publish(api, "secure", 1)
            event = await until_op(ws, "event")
            assert event["channel"] == "secure" and event["offset"] == 1
    run(scenario())


def test_the_server_pings_and_closes_a_connection_whose_pongs_stop(make_herald):
    import socket
    herald = make_herald("--heartbeat", "1")
    host, port = herald.url.removeprefix("http://").rsplit(":", 1)
    # A raw client: it completes the handshake, then reads frames and never answers a ping.
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        received = b""  # the 10 s socket timeout fails the test if the server never closes
        while b"\r\n\r\n" not in received:
            received += raw.recv(4096)
        assert received.startswith(b"HTTP/1.1 101")
        frames = received.split(b"\r\n\r\n", 1)[1]
        while True:
            chunk = raw.recv(4096)
            if not chunk:
                break
            frames += chunk
    opcodes = []
    while len(frames) >= 2:  # unmasked server frames, short payloads
        length = frames[1] & 0x7F
        opcodes.append(frames[0] & 0x0F)
        frames = frames[2 + length:]
    assert opcodes[0] == 0x9  # a ping
    assert 0x8 in opcodes or not frames  # then a close (or just the end of the connection)


def test_a_message_over_the_limit_closes_with_1009(make_herald):
    herald = make_herald(config={"ws-max-message-bytes": 1024})

    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "ping", "pad": "x" * 4000}))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd.code == 1009
    run(scenario())


def test_a_client_that_does_not_read_is_cut_off_as_a_slow_consumer(make_herald):
    # The queue bound is under test, not the write deadline nor the liveness pings: the flood may
    # take longer than 30 s on a loaded machine, and a client that reads nothing meanwhile answers
    # no ping, so with the default heartbeat the ping timeout would close the connection first.
    herald = make_herald(config={"ws-max-queued-frames": 16, "write-timeout": 600, "heartbeat": 600})

    async def scenario():
        async with websockets.connect(ws_url(herald), max_queue=1) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "flood"}))
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=herald.url, headers=AUTH, timeout=30) as client:
                for n in range(3000):  # ~16 MB that deflate cannot shrink: past socket buffers and the queue
                    payload = base64.b64encode(os.urandom(4000)).decode()
                    await client.post("/api/v1/channels/flood/events", json={"type": "t", "data": payload})
            frames = []
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
            error = [f for f in frames if f["op"] == "error"]
            assert error and error[-1]["code"] == "slow_consumer" and error[-1]["channel"] == "flood"
            offsets = [f["offset"] for f in frames if f["op"] == "event"]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))  # in order, no gap
            assert len(offsets) < 3000
            assert closed.value.rcvd.code == 1008
    run(scenario())


def test_sigterm_closes_with_1012_and_the_client_resumes_after_restart(make_herald):
    herald = make_herald()

    async def first():
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "restart"}))
            await recv(ws)
            with httpx.Client(base_url=herald.url, headers=AUTH) as client:
                publish(client, "restart", 2)
            last = [await recv(ws), await recv(ws)][-1]
            herald.proc.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await recv(ws)
            assert closed.value.rcvd.code == 1012
            return last

    last = run(first())
    assert herald.proc.wait(timeout=30) == 0
    herald.start()
    with herald.client() as api:
        publish(api, "restart", 2, start=2)

    async def second():
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "restart", "since": last["offset"],
                                      "epoch": last["epoch"]}))
            assert (await recv(ws))["recovered"] is True
            return [(await recv(ws))["offset"], (await recv(ws))["offset"]]

    assert run(second()) == [3, 4]


def test_switching_transports_mid_stream_loses_and_repeats_nothing(herald, api):
    publish(api, "switch", 3)
    # 1. SSE reads the first three.
    with httpx.Client(base_url=herald.url, timeout=20) as client:
        with connect_sse(client, "GET", "/api/v1/channels/switch/events", params={"since": 0}) as source:
            seen = []
            for message in source.iter_sse():
                if message.data:
                    seen.append(json.loads(message.data))
                if len(seen) == 3:
                    break
    publish(api, "switch", 3, start=3)

    # 2. WebSocket resumes from the last SSE position.
    async def over_websocket():
        async with websockets.connect(ws_url(herald)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "switch", "since": seen[-1]["offset"],
                                      "epoch": seen[-1]["epoch"]}))
            assert (await recv(ws))["recovered"] is True
            return [await recv(ws) for _ in range(3)]

    seen += run(over_websocket())
    publish(api, "switch", 3, start=6)
    # 3. Long polling takes over from the last WebSocket position.
    read = api.get("/api/v1/channels/switch/events",
                   params={"since": seen[-1]["offset"], "epoch": seen[-1]["epoch"], "wait": 10}).json()
    assert read["recovered"] is True
    seen += read["events"]
    assert [e["data"]["n"] for e in seen] == list(range(9))
    assert [e["offset"] for e in seen] == list(range(1, 10))


def test_a_plain_get_of_the_websocket_path_says_to_upgrade(api):
    response = api.get("/api/v1/ws")
    assert response.status_code == 426 and response.headers["content-type"] == "application/problem+json"
