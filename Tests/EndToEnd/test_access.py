"""Access control on every transport: client tokens (PyJWT, HS256 and ES256 from a JWKS file),
private channels, publishing with a token, who creates and cancels checks, CORS and origins."""

import asyncio
import json
import subprocess
import time

import grpc
import httpx
import jwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec
from httpx_sse import connect_sse

from conftest import API_KEY, AUTH, BIN, Herald, assert_problem, create, wait_for
from test_grpc import Commands, code_of, free_port, pb  # noqa: F401  (the generated client)
from test_websocket import recv, run, until_op, ws_url

SECRET = "a-test-secret-of-at-least-32-bytes-long!"
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def token(seconds=60, channels=("orders",), publish=(), checks=False, sub="alice", key="hs", **claims):
    body = {"exp": int(time.time()) + seconds, "sub": sub, "channels": list(channels), "publish": list(publish),
            "checks": checks, **claims}
    if key == "es":
        return jwt.encode(body, EC_KEY, algorithm="ES256", headers={"kid": "test-ec"})
    return jwt.encode(body, SECRET, algorithm="HS256")


def bearer(value):
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One Herald for the module, tokens on: the HMAC secret and a JWKS file with an EC key."""
    folder = tmp_path_factory.mktemp("access")
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    jwk.update(kid="test-ec", alg="ES256", use="sig")
    (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    config = {"token-secret": SECRET, "token-jwks-file": str(folder / "jwks.json"), "token-leeway": 0}
    (folder / "config.json").write_text(json.dumps(config))
    herald = Herald(folder / "data", ["--grpc-port", str(free_port()), "--config", str(folder / "config.json")])
    herald.start()
    with herald.client() as api:
        for n in range(2):
            assert api.post("/api/v1/channels/orders/events", json={"type": "order", "data": {"n": n}},
                            headers=AUTH).status_code == 201
    yield herald
    herald.stop()


def test_the_start_line_says_what_is_public(served, make_herald):
    assert "client tokens on; public channels: none" in "".join(served.output)
    open_herald = make_herald()
    assert "every channel is public (no token key is set); create-checks: anyone" in "".join(open_herald.output)


# The answer each credential gets, on every HTTP transport.
CASES = {
    "no token": (lambda: {}, 401, "token-required"),
    "expired token": (lambda: bearer(token(seconds=-10)), 401, "token-expired"),
    "garbage token": (lambda: bearer("aaa.bbb.ccc"), 401, "token-invalid"),
    "wrong signature": (lambda: bearer(jwt.encode({"exp": int(time.time()) + 60, "channels": ["orders"]},
                                                  SECRET + "x", algorithm="HS256")), 401, "token-invalid"),
    "token for another channel": (lambda: bearer(token(channels=["other"])), 403, "channel-forbidden"),
    "right token by header": (lambda: bearer(token()), 200, None),
    "right ES256 token by header": (lambda: bearer(token(key="es")), 200, None),
    "right token by query": (lambda: {"access_token": token()}, 200, None),
}

TRANSPORTS = {
    "poll": {"since": 0},
    "long poll": {"since": 0, "wait": 5},
    "jsonp": {"since": 0, "callback": "cb"},
    "sse": {"since": 0, "format": "sse"},
    "ndjson": {"since": 0, "format": "ndjson"},
    "iframe": {"since": 0, "format": "html"},
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_http_transport_enforces_the_token(served, transport, case):
    make, status, code = CASES[case]
    credential = make()
    params = dict(TRANSPORTS[transport])
    headers = {}
    if "access_token" in credential:
        params["access_token"] = credential["access_token"]
    else:
        headers = credential
    with httpx.Client(base_url=served.url, timeout=10) as client:
        with client.stream("GET", "/api/v1/channels/orders/events", params=params, headers=headers) as response:
            if status != 200:
                response.read()
                body = assert_problem(response, status)
                assert body["code"] == code
                if status == 401:
                    assert response.headers["www-authenticate"].startswith("Bearer")
                return
            assert response.status_code == 200
            seen = ""
            for chunk in response.iter_text():
                seen += chunk
                if '"n":1' in seen:
                    break
            assert '"n":0' in seen and '"n":1' in seen


def test_check_channels_are_read_by_whoever_holds_the_id(served):
    with served.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 50}}, **AUTH).json()
        assert api.get(f"/api/v1/checks/{check['id']}").status_code == 200
        assert api.get(f"/api/v1/checks/{check['id']}/events", params={"since": 0}).status_code == 200
        assert api.get(f"/api/v1/channels/check:{check['id']}/events", params={"since": 0}).status_code == 200
        # A credential that is given is still checked.
        assert_problem(api.get(f"/api/v1/checks/{check['id']}", headers=bearer(token(seconds=-10))), 401)


def test_public_channels_need_no_token(make_herald):
    herald = make_herald(config={"token-secret": SECRET, "public-channels": "news:*,weather"})
    with herald.client() as api:
        assert api.get("/api/v1/channels/news:today/events").status_code == 200
        assert api.get("/api/v1/channels/weather/events").status_code == 200
        assert assert_problem(api.get("/api/v1/channels/orders/events"), 401)["code"] == "token-required"


def test_a_websocket_authenticates_by_op_or_url_and_is_refused_per_channel(served):
    async def scenario():
        async with websockets.connect(ws_url(served)) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "since": 0, "id": 1}))
            error = await until_op(ws, "error")
            assert (error["code"], error["channel"], error["id"]) == ("token_required", "orders", 1)
            await ws.send(json.dumps({"op": "auth", "token": token(seconds=-10), "id": 2}))
            assert (await until_op(ws, "error"))["code"] == "token_expired"
            await ws.send(json.dumps({"op": "auth", "token": "x.y.z", "id": 3}))
            assert (await until_op(ws, "error"))["code"] == "token_invalid"
            await ws.send(json.dumps({"op": "auth", "token": token(channels=["other"]), "id": 4}))
            authed = await until_op(ws, "authed")
            assert authed["id"] == 4 and authed["sub"] == "alice" and authed["exp"] > time.time()
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "since": 0, "id": 5}))
            assert (await until_op(ws, "error"))["code"] == "channel_forbidden"
            await ws.send(json.dumps({"op": "auth", "token": token(key="es"), "id": 6}))
            await until_op(ws, "authed")
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "since": 0, "id": 7}))
            assert (await until_op(ws, "subscribed"))["id"] == 7
            assert (await until_op(ws, "event"))["data"] == {"n": 0}
        async with websockets.connect(ws_url(served) + "?access_token=" + token()) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "since": 0, "id": 1}))
            assert (await until_op(ws, "subscribed"))["id"] == 1
        async with websockets.connect(ws_url(served), additional_headers=bearer(token())) as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "since": 0, "id": 1}))
            assert (await until_op(ws, "subscribed"))["id"] == 1
        async with websockets.connect(ws_url(served) + "?access_token=" + token(seconds=-5)) as ws:
            assert (await recv(ws))["code"] == "token_expired"
    run(scenario())


def test_grpc_takes_the_token_as_metadata(served, pb):
    m, services = pb
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = services.HeraldStub(channel)

        def subscribe(metadata):
            commands = Commands()
            commands.put(m.SubscribeRequest(subscribe=m.ChannelSubscribe(channel="orders", from_start=True),
                                            request_id=1))
            responses = stub.Subscribe(iter(commands), metadata=metadata)
            first = next(responses)
            commands.close()
            responses.cancel()
            return first

        assert subscribe(()).error.code == "token_required"
        assert subscribe((("authorization", f"Bearer {token(channels=['x'])}"),)).error.code == "channel_forbidden"
        assert subscribe((("authorization", f"Bearer {token()}"),)).subscribed.channel == "orders"
        code, details = code_of(lambda: subscribe((("authorization", f"Bearer {token(seconds=-10)}"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "expired" in details
        code, _ = code_of(lambda: stub.GetCheck(m.GetCheckRequest(id="A" * 22),
                                                metadata=(("authorization", "Bearer a.b.c"),)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = code_of(lambda: stub.Publish(m.PublishRequest(channel="chat:1", type="said", data_json="{}"),
                                               metadata=(("authorization", f"Bearer {token()}"),)))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        published = stub.Publish(m.PublishRequest(channel="chat:1", type="said", data_json='{"hi":1}'),
                                 metadata=(("authorization", f"Bearer {token(publish=['chat:*'])}"),))
        assert published.channel == "chat:1" and published.offset >= 1


@pytest.mark.parametrize("fmt", ["sse", "ndjson", "html"])
def test_an_http_stream_ends_with_herald_expired_when_its_token_does(served, fmt):
    short = token(seconds=2)
    with httpx.Client(base_url=served.url, timeout=20) as client:
        started = time.monotonic()
        with client.stream("GET", "/api/v1/channels/orders/events", params={"since": 0, "format": fmt},
                           headers=bearer(short)) as response:
            assert response.status_code == 200
            text = "".join(response.iter_text())  # the server ends the stream
        assert 1 <= time.monotonic() - started < 10
        assert "herald.expired" in text
        expired = json.loads(text[text.index('{"type":"herald.expired"'):].split("\n")[0].split(");")[0]
                             .rstrip(")").rstrip("</script>"))
        assert expired["channel"] == "orders" and expired["last"] >= 2 and expired["epoch"]


def test_an_sse_client_told_expired_resumes_with_a_fresh_token_without_a_gap(served):
    with httpx.Client(base_url=served.url, timeout=20) as client:
        seen = []
        with connect_sse(client, "GET", "/api/v1/channels/orders/events", params={"since": 0},
                         headers=bearer(token(seconds=2))) as source:
            for message in source.iter_sse():
                if message.event == "herald.expired":
                    last_id = last
                    break
                if message.data:
                    seen.append(json.loads(message.data)["offset"])
                    last = message.id
        client.post("/api/v1/channels/orders/events", json={"type": "order", "data": {"n": "late"}}, headers=AUTH)
        with connect_sse(client, "GET", "/api/v1/channels/orders/events",
                         headers={**bearer(token()), "Last-Event-ID": last_id}) as source:
            for message in source.iter_sse():
                if message.data:
                    seen.append(json.loads(message.data)["offset"])
                    break
        assert seen == list(range(1, len(seen) + 1))


def test_a_websocket_is_told_expired_unless_it_refreshes(served):
    async def scenario():
        async with websockets.connect(ws_url(served)) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(seconds=2), "id": 1}))
            await until_op(ws, "authed")
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "id": 2}))
            await until_op(ws, "subscribed")
            expired = await until_op(ws, "expired", timeout=10)
            assert expired["channels"] == ["orders"]
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "id": 3}))
            assert (await until_op(ws, "error"))["code"] == "token_required"
        async with websockets.connect(ws_url(served)) as ws:
            await ws.send(json.dumps({"op": "auth", "token": token(seconds=2), "id": 1}))
            await until_op(ws, "authed")
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "id": 2}))
            await until_op(ws, "subscribed")
            await ws.send(json.dumps({"op": "auth", "token": token(seconds=60), "id": 3}))
            await until_op(ws, "authed")
            await asyncio.sleep(3)
            with httpx.Client(base_url=served.url) as api:
                api.post("/api/v1/channels/orders/events", json={"type": "order", "data": {"n": "after"}},
                         headers=AUTH)
            frame = await until_op(ws, "event")
            assert frame["data"] == {"n": "after"}
    run(scenario())


def test_a_grpc_subscribe_ends_unauthenticated_at_expiry(served, pb):
    m, services = pb
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        commands = Commands()
        commands.put(m.SubscribeRequest(subscribe=m.ChannelSubscribe(channel="orders"), request_id=1))
        responses = services.HeraldStub(channel).Subscribe(
            iter(commands), metadata=(("authorization", f"Bearer {token(seconds=2)}"),))
        assert next(responses).subscribed.channel == "orders"
        with pytest.raises(grpc.RpcError) as ended:
            for _ in responses:
                pass
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in ended.value.details()
        commands.close()


def test_clients_publish_where_their_token_grants(served):
    async def scenario():
        async with websockets.connect(ws_url(served) + "?access_token=" + token(publish=["chat:*"])) as ws:
            await ws.send(json.dumps({"op": "publish", "channel": "chat:room", "type": "said",
                                      "data": {"text": "hi"}, "id": 9}))
            published = await until_op(ws, "published")
            assert published["id"] == 9 and published["channel"] == "chat:room" and published["offset"] >= 1
            await ws.send(json.dumps({"op": "publish", "channel": "orders", "type": "said", "id": 10}))
            assert (await until_op(ws, "error"))["code"] == "channel_forbidden"
    run(scenario())
    with served.client() as api:
        url = "/api/v1/channels/chat:room/events"
        ok = api.post(url, json={"type": "said", "data": 1}, headers=bearer(token(publish=["chat:*"])))
        assert ok.status_code == 201 and ok.json()["type"] == "said"
        assert assert_problem(api.post(url, json={"type": "said"}, headers=bearer(token())), 403)["code"] \
            == "channel-forbidden"
        assert assert_problem(api.post(url, json={"type": "said"}), 401)["code"] == "token-required"


def test_who_creates_checks(make_herald):
    herald = make_herald(config={"token-secret": SECRET, "create-checks": "token"})
    body = {"kind": "delay", "params": {"ms": 10}}
    with herald.client() as api:
        assert assert_problem(create(api, body), 401)["code"] == "token-required"
        assert assert_problem(create(api, body, **bearer(token())), 403)["code"] == "forbidden"
        assert create(api, body, **bearer(token(checks=True))).status_code == 202
        assert create(api, body, **AUTH).status_code == 202
    keyed = make_herald(config={"create-checks": "key"})
    with keyed.client() as api:
        assert assert_problem(create(api, body), 401)["code"] == "unauthorized"
        assert create(api, body, **AUTH).status_code == 202


def test_a_public_address_defaults_to_the_safe_creators(make_herald):
    herald = make_herald("--host", "0.0.0.0")
    assert "create-checks: key" in "".join(herald.output)
    with httpx.Client(base_url=herald.url.replace("0.0.0.0", "127.0.0.1")) as api:
        assert create(api, {"kind": "delay", "params": {"ms": 10}}).status_code == 401
    tokens = make_herald("--host", "0.0.0.0", config={"token-secret": SECRET})
    assert "create-checks: token" in "".join(tokens.output)


def test_the_creating_token_cancels_and_another_does_not(make_herald):
    herald = make_herald(config={"token-secret": SECRET, "create-checks": "token"})
    with herald.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 60000}}, **bearer(token(checks=True, sub="bob"))).json()
        url = f"/api/v1/checks/{check['id']}"
        assert assert_problem(api.delete(url, headers=bearer(token(sub="eve"))), 403)["code"] == "forbidden"
        assert api.delete(url, headers=bearer(token(sub="bob"))).json()["state"] == "canceled"


def test_check_allowed_targets_limit_probes(make_herald):
    herald = make_herald("--allow-private-targets", config={"check-allowed-targets": "127.0.0.1:1"})
    with herald.client() as api:
        refused = create(api, {"kind": "tcp", "params": {"host": "127.0.0.1", "port": 22}})
        assert assert_problem(refused, 403, "check-allowed-targets")["code"] == "forbidden"
        assert create(api, {"kind": "tcp", "params": {"host": "127.0.0.1", "port": 1}}).status_code == 202
        # A callback is a request Herald makes too.
        with_callback = create(api, {"kind": "tcp", "params": {"host": "127.0.0.1", "port": 1},
                                     "callback_url": "http://127.0.0.1:22/hook"})
        assert assert_problem(with_callback, 403, "127.0.0.1:22")["code"] == "forbidden"
        # The server API key keeps every right.
        assert create(api, {"kind": "tcp", "params": {"host": "127.0.0.1", "port": 22}}, **AUTH).status_code == 202


def test_several_named_server_keys_work_side_by_side(make_herald, tmp_path):
    herald = Herald(tmp_path / "keys", ["--grpc-port", "0"])
    herald.command = lambda: [*Herald.command(herald)[:-2], "--api-key", "old=first-key-1234,new=second-key-5678"]
    herald.start()
    try:
        with herald.client() as api:
            for key in ("first-key-1234", "second-key-5678"):
                assert api.get("/api/v1/checks", headers=bearer(key)).status_code == 200
            assert assert_problem(api.get("/api/v1/checks", headers=bearer("third-key-0000")), 401)["code"] \
                == "unauthorized"
    finally:
        herald.stop()


def test_allowed_origins_drive_cors_and_the_websocket_origin_check(make_herald):
    herald = make_herald(config={"allowed-origins": "https://app.example"})
    with herald.client() as api:
        preflight = api.options("/api/v1/checks", headers={"Origin": "https://app.example",
                                                           "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        answer = create(api, {"kind": "delay", "params": {"ms": 10}}, Origin="https://app.example")
        assert answer.headers["access-control-allow-origin"] == "https://app.example"
        exposed = answer.headers["access-control-expose-headers"]
        assert all(name in exposed for name in ("ETag", "Location", "Retry-After", "Link"))
        other = create(api, {"kind": "delay", "params": {"ms": 10}}, Origin="https://evil.example")
        assert "access-control-allow-origin" not in other.headers

    async def scenario():
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(ws_url(herald), origin="https://evil.example"):
                pass
        async with websockets.connect(ws_url(herald), origin="https://app.example") as ws:
            await ws.send(json.dumps({"op": "ping"}))
            assert (await recv(ws))["op"] == "pong"
    run(scenario())
    anyone = make_herald()
    with anyone.client() as api:
        answer = api.get("/healthz", headers={"Origin": "https://any.example"})
        assert answer.headers["access-control-allow-origin"] == "*"


def test_jsonp_can_be_turned_off(make_herald):
    herald = make_herald(config={"jsonp": False})
    with herald.client() as api:
        assert_problem(api.get("/api/v1/channels/x/events", params={"callback": "cb"}), 403, "JSONP")


@pytest.mark.parametrize("transport", ["ws", "sse", "long-polling"])
def test_the_cli_and_heraldclient_take_a_token(served, transport):
    subscriber = subprocess.Popen([BIN, "subscribe", "orders", "--url", served.url, "--since", "0",
                                   "--token", token(), "--transport", transport],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [json.loads(subscriber.stdout.readline()) for _ in range(2)]
        assert [line["data"] for line in lines] == [{"n": 0}, {"n": 1}]
    finally:
        subscriber.kill()
        subscriber.wait()
    refused = subprocess.run([BIN, "subscribe", "orders", "--url", served.url, "--since", "0",
                              "--transport", transport], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and ("401" in refused.stderr or "token" in refused.stderr), refused.stderr


def from_address(herald, address):
    """A client whose connections come from `address` (127.0.0.0/8 is all loopback here)."""
    return httpx.Client(base_url=herald.url, transport=httpx.HTTPTransport(local_address=address), timeout=10)


def test_a_client_over_its_rate_is_told_when_to_come_back_while_others_are_served(make_herald):
    herald = make_herald(config={"token-secret": SECRET, "create-checks": "token", "rate-limit-creates": 1,
                                 "rate-limit-publishes": 1})
    body = {"kind": "delay", "params": {"ms": 10}}
    with herald.client() as api:
        alice = bearer(token(checks=True, sub="alice", publish=["chat:*"]))
        answers = [create(api, body, **alice) for _ in range(3)]
        assert [a.status_code for a in answers] == [202, 202, 429]
        problem = assert_problem(answers[2], 429, "rate limit")
        assert problem["code"] == "rate-limited" and int(answers[2].headers["retry-after"]) >= 1
        # Another client, and the server key, are served meanwhile.
        assert create(api, body, **bearer(token(checks=True, sub="bob"))).status_code == 202
        assert all(create(api, body, **AUTH).status_code == 202 for _ in range(5))
        publishes = [api.post("/api/v1/channels/chat:1/events", json={"type": "t"}, headers=alice) for _ in range(3)]
        assert [p.status_code for p in publishes] == [201, 201, 429]

    async def scenario():
        async with websockets.connect(ws_url(herald) + "?access_token=" + token(checks=True, sub="carol")) as ws:
            for n in range(3):
                await ws.send(json.dumps({"op": "create_check", "check": body, "id": n}))
            answers = [await recv(ws) for _ in range(3)]
            assert [a["op"] for a in answers] == ["created", "created", "error"]
            assert answers[2]["code"] == "rate_limited"
    run(scenario())


def test_without_trusted_proxies_x_forwarded_for_is_ignored_and_with_them_it_counts(make_herald):
    body = {"kind": "delay", "params": {"ms": 10}}
    plain = make_herald(config={"rate-limit-creates": 1})
    with plain.client() as api:
        codes = [create(api, body, **{"X-Forwarded-For": f"10.0.0.{n}"}).status_code for n in range(3)]
        assert codes == [202, 202, 429]  # the same client, whatever it claims
    proxied = make_herald(config={"rate-limit-creates": 1, "trusted-proxies": "127.0.0.1/32"})
    with proxied.client() as api:
        codes = [create(api, body, **{"X-Forwarded-For": f"203.0.113.9, 10.0.0.{n}"}).status_code for n in range(3)]
        assert codes == [202, 202, 202]  # three clients behind the proxy
        codes = [create(api, body, **{"X-Forwarded-For": "198.51.100.7"}).status_code for _ in range(3)]
        assert codes == [202, 202, 429]


def test_websocket_ops_are_rate_limited_per_client(make_herald, pb):
    herald = make_herald("--grpc-port", str(free_port()), config={"rate-limit-ws-ops": 2, "rate-limit-publishes": 1})

    async def scenario():
        async with websockets.connect(ws_url(herald)) as ws:
            for n in range(6):
                await ws.send(json.dumps({"op": "ping", "id": n}))
            answers = [await recv(ws) for _ in range(6)]
            assert [a["op"] for a in answers].count("pong") == 4
            refusals = [a for a in answers if a["op"] == "error"]
            assert {a["code"] for a in refusals} == {"rate_limited"}
            assert all(a["retry_after"] >= 1 and "id" in a for a in refusals)
            await ws.send(json.dumps({"op": "subscribe", "channel": "c", "id": 9}))
            refused = await until_op(ws, "error")
            assert (refused["channel"], refused["id"]) == ("c", 9)
    run(scenario())
    m, services = pb
    with grpc.insecure_channel(f"127.0.0.1:{herald.grpc_port}") as channel:
        stub = services.HeraldStub(channel)
        token_metadata = (("authorization", f"Bearer {API_KEY}"),)
        for _ in range(5):  # the server key is never limited
            stub.Publish(m.PublishRequest(channel="c", type="t"), metadata=token_metadata)


def test_connection_caps_per_address_and_in_all(make_herald):
    herald = make_herald(config={"max-connections-per-ip": 2})
    path = "/api/v1/channels/held/events"
    first, second, third, other = (from_address(herald, "127.0.0.2"), from_address(herald, "127.0.0.2"),
                                   from_address(herald, "127.0.0.2"), from_address(herald, "127.0.0.3"))
    with first.stream("GET", path, params={"format": "sse"}) as a, second.stream("GET", path,
                                                                                  params={"format": "sse"}) as b:
        assert a.status_code == b.status_code == 200
        refused = third.get("/healthz")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "max-connections-per-ip" in refused.json()["detail"]
        assert other.get("/healthz").status_code == 200
    # The address's connections were counted out when they closed.
    assert wait_for(lambda: from_address(herald, "127.0.0.2").get("/healthz").status_code == 200)
    # A trusted proxy carries many clients: the per-address cap does not apply to it.
    proxied = make_herald(config={"max-connections-per-ip": 1, "trusted-proxies": "127.0.0.8"})
    with from_address(proxied, "127.0.0.8").stream("GET", path, params={"format": "sse"}) as held:
        assert held.status_code == 200
        assert from_address(proxied, "127.0.0.8").get("/healthz").status_code == 200
        assert from_address(proxied, "127.0.0.9").get("/healthz").status_code == 200
    capped = make_herald(config={"max-connections": 1})
    with from_address(capped, "127.0.0.4").stream("GET", path, params={"format": "sse"}) as held:
        assert held.status_code == 200
        refused = from_address(capped, "127.0.0.5").get("/healthz")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"


def test_connection_attempts_are_rate_limited_per_address(make_herald):
    herald = make_herald(config={"rate-limit-connects": 1})
    codes = []
    for _ in range(4):
        with from_address(herald, "127.0.0.6") as client:
            codes.append(client.get("/healthz").status_code)
    assert codes[:2] == [200, 200] and 429 in codes[2:]
    with from_address(herald, "127.0.0.7") as client:
        assert client.get("/healthz").status_code == 200


def test_grpc_web_takes_the_token_as_a_header(served, pb):
    m, _ = pb
    check_id = "A" * 22
    message = m.GetCheckRequest(id=check_id).SerializeToString()
    frame = b"\x00" + len(message).to_bytes(4, "big") + message
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}

    def status(extra):
        with served.client() as api:
            answer = api.post("/herald.v1.Herald/GetCheck", content=frame, headers={**headers, **extra})
        text = answer.headers.get("grpc-status") or answer.content.decode("latin-1")
        return text

    assert "grpc-status: 16" in status(bearer(token(seconds=-10))) or status(bearer(token(seconds=-10))) == "16"
    not_found = status(bearer(token()))
    assert "grpc-status: 5" in not_found or not_found == "5"


def test_a_held_long_poll_never_outlives_its_token(served):
    with served.client() as api:
        head = api.get("/api/v1/channels/orders/events", headers=AUTH).json()["next"]
        started = time.monotonic()
        answer = api.get("/api/v1/channels/orders/events", params={"since": head, "wait": 20},
                         headers=bearer(token(seconds=2)))
        assert answer.status_code == 200 and answer.json()["events"] == []
        assert time.monotonic() - started < 10


def test_keys_from_a_jwks_url_are_fetched_once_and_again_for_a_new_kid(make_herald):
    import http.server
    import threading

    keys = {"current": [EC_KEY]}
    fetches = []

    def jwks():
        out = []
        for index, key in enumerate(keys["current"]):
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=f"k{index}", alg="ES256")
            out.append(jwk)
        return json.dumps({"keys": out}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            fetches.append(self.path)
            body = jwks()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        herald = make_herald(config={"token-jwks-url": f"http://127.0.0.1:{server.server_port}/jwks.json"})

        def signed(key, kid):
            claims = {"exp": int(time.time()) + 60, "channels": ["orders"]}
            return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})

        with herald.client() as api:
            url = "/api/v1/channels/orders/events"
            for _ in range(3):
                assert api.get(url, headers=bearer(signed(EC_KEY, "k0"))).status_code == 200
            assert len(fetches) == 1
            # The issuer adds a key: a token with its kid makes Herald fetch again.
            rotated = ec.generate_private_key(ec.SECP256R1())
            keys["current"] = [EC_KEY, rotated]
            assert api.get(url, headers=bearer(signed(rotated, "k1"))).status_code == 200
            assert len(fetches) == 2
            # Made-up kids cost the issuer at most one fetch per interval, not one per token.
            for n in range(5):
                assert api.get(url, headers=bearer(signed(rotated, f"nope{n}"))).status_code == 401
            assert len(fetches) == 2
    finally:
        server.shutdown()


def test_a_forged_header_cannot_lock_a_jwks_key_to_another_algorithm(make_herald, tmp_path):
    """A JWKS key without `alg` (as some issuers publish them) verifies its key type's one
    algorithm: an anonymous token whose header names another (PS256 on an RSA key) is refused
    and changes nothing for the real RS256 tokens after it."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    import base64

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.pop("alg", None)
    jwk["kid"] = "rsa-1"
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    herald = make_herald(config={"token-jwks-file": str(tmp_path / "jwks.json")})

    def b64(value):
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    forged = b64({"alg": "PS256", "kid": "rsa-1"}) + "." + b64({"exp": int(time.time()) + 60}) + ".AA"
    real = jwt.encode({"exp": int(time.time()) + 60, "channels": ["orders"]}, key, algorithm="RS256",
                      headers={"kid": "rsa-1"})
    with herald.client() as api:
        url = "/api/v1/channels/orders/events"
        assert assert_problem(api.get(url, headers=bearer(forged)), 401)["code"] == "token-invalid"
        assert api.get(url, headers=bearer(real)).status_code == 200
        assert api.get(url, headers=bearer(forged)).status_code == 401
        assert api.get(url, headers=bearer(real)).status_code == 200


def test_the_cli_waits_out_a_retry_after(tmp_path):
    """HeraldClient (through `herald subscribe`) does not come back before a 429's Retry-After,
    where its own backoff would start at a quarter of a second."""
    import http.server
    import threading

    attempts = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            attempts.append(time.monotonic())
            body = b'{"type":"urn:herald:problem:rate-limited","status":429,"code":"rate-limited"}'
            self.send_response(429)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    subscriber = subprocess.Popen([BIN, "subscribe", "orders", "--url", f"http://127.0.0.1:{server.server_port}",
                                   "--transport", "sse"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(7)
    finally:
        subscriber.kill()
        subscriber.wait()
        server.shutdown()
    assert len(attempts) >= 2, attempts
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert min(gaps) >= 1.9, gaps
