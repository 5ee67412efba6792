"""A cluster: several `herald serve` nodes on one PostgreSQL database (HERALD_TEST_POSTGRES, which
scripts/test.sh points at a throwaway server), each test in a schema of its own."""

import asyncio
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
import uuid

import grpc
import httpx
import pytest
import websockets
from httpx_sse import connect_sse

from conftest import AUTH, ROOT, assert_problem, create, wait_for
from test_grpc import Commands, free_port, pb  # noqa: F401  (pb: the generated gRPC client fixture)
from test_webhooks import Receiver


@pytest.fixture
def store_url():
    url = os.environ.get("HERALD_TEST_POSTGRES")
    if not url:
        pytest.fail("HERALD_TEST_POSTGRES is not set: run scripts/test.sh, which starts a throwaway PostgreSQL "
                    "(apt-get install -y postgresql)")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}search_path=cluster_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cluster(make_herald, store_url):
    """cluster(n, *args): n nodes on the test's schema, started one after another."""
    def start(count, *args):
        return [make_herald("--store", store_url, "--allow-private-targets", *args) for _ in range(count)]
    return start


def publish(node, channel, value):
    response = httpx.post(f"{node.url}/api/v1/channels/{channel}/events", json={"type": "t", "data": value},
                          headers=AUTH, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()


def test_an_event_published_on_one_node_reaches_every_transport_on_every_node(cluster):
    a, b, c = cluster(3)
    got = {}

    def sse_on_b():
        with httpx.Client(timeout=30) as client:
            with connect_sse(client, "GET", f"{b.url}/api/v1/channels/orders/events?since=0") as source:
                for event in source.iter_sse():
                    if event.event != "heartbeat" and event.data:
                        got["sse"] = json.loads(event.data)
                        return

    async def websocket_on_c(subscribed):
        async with websockets.connect(c.url.replace("http://", "ws://") + "/api/v1/ws") as ws:
            await ws.send(json.dumps({"op": "subscribe", "channel": "orders", "since": 0, "id": 1}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                if frame.get("op") == "subscribed":
                    subscribed.set()
                elif "offset" in frame:
                    got["ws"] = frame
                    return

    def long_poll_on_a():
        response = httpx.get(f"{a.url}/api/v1/channels/orders/events?since=0&wait=20", timeout=30)
        got["poll"] = response.json()["events"][0]

    subscribed = threading.Event()
    threads = [threading.Thread(target=sse_on_b), threading.Thread(target=long_poll_on_a),
               threading.Thread(target=lambda: asyncio.run(websocket_on_c(subscribed)))]
    for thread in threads:
        thread.start()
    assert subscribed.wait(20)
    time.sleep(0.5)  # the SSE stream and the long poll are held by now
    sent = publish(a, "orders", {"n": 1})
    for thread in threads:
        thread.join(30)
    for transport in ("sse", "ws", "poll"):
        assert got[transport]["offset"] == 1 and got[transport]["epoch"] == sent["epoch"], transport
        assert got[transport]["data"] == {"n": 1}, transport


def test_concurrent_publishers_on_every_node_get_offsets_one_to_n(cluster):
    nodes = cluster(3)
    offsets = []
    lock = threading.Lock()

    def publisher(node, start):
        with httpx.Client(base_url=node.url, headers=AUTH, timeout=30) as client:
            for n in range(40):
                response = client.post("/api/v1/channels/busy/events", json={"type": "t", "data": start + n})
                assert response.status_code == 201, response.text
                with lock:
                    offsets.append(response.json()["offset"])

    threads = [threading.Thread(target=publisher, args=(node, index * 1000))
               for index, node in enumerate(nodes) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(offsets) == list(range(1, 241))
    # Every node reads the same history, in the same order.
    histories = [httpx.get(f"{node.url}/api/v1/channels/busy/events?since=0", timeout=30).json()
                 for node in nodes]
    assert all(history == histories[0] for history in histories)
    assert [event["offset"] for event in histories[0]["events"]] == list(range(1, 241))


def test_a_check_whose_node_was_killed_is_finished_by_another(cluster):
    a, b = cluster(2)
    with a.client() as client:
        created = create(client, {"kind": "delay", "params": {"ms": 1500, "outcome": "done"}})
        assert created.status_code == 202
    check = created.json()
    a.kill9()
    # b takes the check over once a has been silent for 10 s, and keeps its deadline.
    def finished():
        response = httpx.get(f"{b.url}/api/v1/checks/{check['id']}", timeout=10)
        return response.json()["state"] == "done" and response.json()
    done = wait_for(finished, timeout=40, interval=0.5)
    assert done["version"] == 2


def test_the_cluster_lists_its_nodes_and_each_is_ready(cluster):
    nodes = cluster(2)
    for node in nodes:
        assert httpx.get(f"{node.url}/readyz", timeout=10).json() == {"status": "ready"}
    def addresses():
        listed = httpx.get(f"{nodes[0].url}/api/v1/cluster", headers=AUTH, timeout=10)
        assert listed.status_code == 200
        return sorted(node["address"] for node in listed.json()["nodes"])
    # Each node beats every second, with its address once its port is bound.
    wait_for(lambda: addresses() == sorted(node.url for node in nodes), timeout=10)
    assert httpx.get(f"{nodes[0].url}/api/v1/cluster", timeout=10).status_code == 401


def test_each_webhook_delivery_is_attempted_by_one_node(cluster):
    receiver = Receiver()
    try:
        nodes = cluster(3, "--webhook-timeout", "5")
        with nodes[0].client() as client:
            response = client.post("/api/v1/subscription", headers=AUTH,
                                   json={"target_url": receiver.url + "/all", "event": "*"})
            assert response.status_code == 201, response.text

        def publisher(node, start):
            for n in range(100):
                publish(node, "hooked", start + n)

        threads = [threading.Thread(target=publisher, args=(node, index * 1000)) for index, node in enumerate(nodes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        wait_for(lambda: len({r[1]["webhook-id"] for r in receiver.to("/all")}) == 300, timeout=60)
        time.sleep(1)
        attempts = [r[1]["webhook-id"] for r in receiver.to("/all")]
        assert len(attempts) == 300 and len(set(attempts)) == 300
    finally:
        receiver.close()


def test_a_node_that_starts_leaves_the_parks_of_the_other_nodes(cluster):
    """A target not known to be healthy gets one attempt at a time: the second callback to it is
    parked behind the first's attempt on A. Node B, started meanwhile, leaves that park alone (a
    lone node lifts every park at start, as they were its previous process's), so the target
    never sees two attempts at once."""
    receiver = Receiver()
    try:
        (a,) = cluster(1, "--webhook-timeout", "10")
        with a.client() as api:
            for _ in range(2):
                body = {"kind": "delay", "params": {"ms": 1}, "callback_url": receiver.url + "/slow"}
                assert create(api, body).status_code == 202
        wait_for(lambda: receiver.to("/slow"), timeout=20)
        cluster(1, "--webhook-timeout", "10")
        b_ready = time.monotonic()
        wait_for(lambda: len(receiver.to("/slow")) == 2, timeout=30)
        first, second = (request[3] for request in receiver.to("/slow"))
        assert b_ready - first < 4.5  # b was up while the first attempt was in flight
        assert second - first >= 4.5  # after the first attempt's 5 s, not beside it
    finally:
        receiver.close()


def sse_offsets(node, channel, last_event_id, received, stop):
    """Reads `channel` over SSE from `node`, resuming after `last_event_id`, appending
    (id, offset) to `received` until `stop` is set or the connection breaks."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    try:
        with httpx.Client(timeout=httpx.Timeout(30, read=30)) as client:
            with connect_sse(client, "GET", f"{node.url}/api/v1/channels/{channel}/events?since=0",
                             headers=headers) as source:
                for event in source.iter_sse():
                    if event.event == "heartbeat" or not event.data:
                        continue
                    received.append((event.id, json.loads(event.data)["offset"]))
                    if stop.is_set():
                        return
    except (httpx.HTTPError, httpx.StreamError):
        return


def test_a_stream_whose_node_is_killed_resumes_on_another_without_gap_or_duplicate(cluster):
    a, b = cluster(2)
    received = []
    stop = threading.Event()
    total = 120

    def publisher():
        for n in range(total):
            publish(b, "moving", n)
            time.sleep(0.01)

    reader = threading.Thread(target=sse_offsets, args=(a, "moving", None, received, stop))
    reader.start()
    time.sleep(0.5)
    sender = threading.Thread(target=publisher)
    sender.start()
    wait_for(lambda: len(received) >= 30, timeout=30)
    a.kill9()
    reader.join(30)
    # The client comes back through another node with its Last-Event-ID.
    last_id = received[-1][0]
    resumed = threading.Thread(target=sse_offsets, args=(b, "moving", last_id, received, stop))
    resumed.start()
    sender.join(60)
    wait_for(lambda: received[-1][1] == total, timeout=30)
    stop.set()
    publish(b, "moving", "last")  # lets the reader see `stop`
    resumed.join(30)
    offsets = [offset for _, offset in received if offset <= total]
    assert offsets == list(range(1, total + 1))


def test_events_published_while_postgresql_restarts_are_all_delivered_once_it_is_back(cluster):
    data_dir = os.environ.get("HERALD_TEST_POSTGRES_DIR")
    if not data_dir:
        pytest.fail("HERALD_TEST_POSTGRES_DIR is not set: scripts/test.sh sets it to the throwaway server's directory")
    a, b = cluster(2)
    received = []
    stop = threading.Event()
    reader = threading.Thread(target=sse_offsets, args=(b, "through", None, received, stop))
    reader.start()
    time.sleep(0.5)
    for n in range(5):
        publish(a, "through", n)
    wait_for(lambda: len(received) == 5, timeout=20)
    restart = ["scripts/throwaway-postgres.sh", "restart", data_dir]
    assert subprocess.run(restart, cwd=ROOT, capture_output=True, text=True, timeout=120).returncode == 0
    # Publishing works again once the pool reconnects; nothing published is lost on b.
    def published(n):
        try:
            publish(a, "through", n)
            return True
        except (AssertionError, httpx.HTTPError):
            return False
    for n in range(5, 10):
        wait_for(lambda: published(n), timeout=30, interval=0.5)
    wait_for(lambda: [offset for _, offset in received][-1:] == [10], timeout=30)
    stop.set()
    publish(a, "through", "last")
    reader.join(30)
    offsets = [offset for _, offset in received if offset <= 10]
    assert offsets == list(range(1, 11))
    wait_for(lambda: httpx.get(f"{b.url}/readyz", timeout=10).status_code == 200, timeout=30)


class SilentProxy:
    """A TCP proxy to PostgreSQL whose path can go silent: every connection stays open and nothing
    is forwarded (packets dropped without a reset, a half-open connection); then the path comes
    back, and the connections that were open are reset."""

    def __init__(self, url):
        parsed = urllib.parse.urlsplit(url)
        self.target = (parsed.hostname, parsed.port)
        self.url = url.replace(f"{parsed.hostname}:{parsed.port}", "127.0.0.1:{port}")
        self.silent = False
        self.lock = threading.Lock()
        self.sockets = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = self.url.format(port=self.listener.getsockname()[1])
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                if self.listener.fileno() < 0:
                    return
                continue
            with self.lock:
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self.pump, args=(source, sink), daemon=True).start()

    def pump(self, source, sink):
        try:
            while data := source.recv(65536):
                while self.silent:
                    time.sleep(0.05)  # held, never forwarded
                sink.sendall(data)
        except OSError:
            pass

    def go_silent(self):
        self.silent = True

    def come_back(self):
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for connection in sockets:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            connection.close()
        self.silent = False

    def close(self):
        self.listener.close()
        self.come_back()


def test_a_node_whose_path_to_postgresql_goes_silent_says_so_and_comes_back(make_herald, store_url):
    proxy = SilentProxy(store_url)
    try:
        node = make_herald("--store", proxy.url, "--allow-private-targets", env={"HERALD_POSTGRES_QUERY_TIMEOUT": "6"})
        wait_for(lambda: httpx.get(f"{node.url}/readyz", timeout=10).status_code == 200, timeout=30)
        proxy.go_silent()

        # A request whose query went out on a silent connection is not held until the kernel
        # gives up on it: past postgres-query-timeout its connection is closed, and it gets a 503.
        started = time.monotonic()
        answer = httpx.post(f"{node.url}/api/v1/channels/back/events", json={"type": "t", "data": 0},
                            headers=AUTH, timeout=30)
        assert_problem(answer, 503)
        assert time.monotonic() - started < 15

        # The listening connection is probed every 2 s and given 5 s to answer: the node stops
        # saying it is ready, and says so at once (no round trip on a silent connection).
        def refused():
            try:
                return httpx.get(f"{node.url}/readyz", timeout=3).status_code == 503
            except httpx.TimeoutException:
                return False
        wait_for(refused, timeout=20)
        proxy.come_back()
        wait_for(lambda: httpx.get(f"{node.url}/readyz", timeout=10).status_code == 200, timeout=30)
        assert publish(node, "back", 1)["offset"] == 1
    finally:
        proxy.close()


def test_while_postgresql_is_down_requests_get_503_and_nothing_is_half_written(cluster, pb):
    data_dir = os.environ.get("HERALD_TEST_POSTGRES_DIR")
    if not data_dir:
        pytest.fail("HERALD_TEST_POSTGRES_DIR is not set: scripts/test.sh sets it to the throwaway server's directory")
    (a,) = cluster(1, "--grpc-port", str(free_port()))
    publish(a, "outage", 1)
    m, service = pb
    stub = service.HeraldStub(grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}"))
    script = str(ROOT / "scripts" / "throwaway-postgres.sh")
    assert subprocess.run([script, "down", data_dir], capture_output=True, timeout=120).returncode == 0
    try:
        answer = httpx.post(f"{a.url}/api/v1/channels/outage/events", json={"type": "t", "data": 2}, headers=AUTH,
                            timeout=60)
        assert_problem(answer, 503)
        assert answer.headers["retry-after"] == "1"
        assert_problem(httpx.get(f"{a.url}/api/v1/channels/outage/events?since=0", timeout=60), 503)
        assert httpx.get(f"{a.url}/readyz", timeout=60).status_code == 503

        # A subscription that cannot read its backlog is refused as `unavailable` (try again), not
        # `internal`, on the WebSocket and on gRPC.
        async def subscribe_over_websocket():
            async with websockets.connect(a.url.replace("http://", "ws://") + "/api/v1/ws") as ws:
                await ws.send(json.dumps({"op": "subscribe", "channel": "outage", "since": 0, "id": 1}))
                return json.loads(await asyncio.wait_for(ws.recv(), 60))
        frame = asyncio.run(subscribe_over_websocket())
        assert (frame["op"], frame["code"], frame["channel"], frame["id"]) == ("error", "unavailable", "outage", 1)
        assert frame["retry_after"] == 1
        commands = Commands()
        responses = stub.Subscribe(iter(commands), timeout=60)
        commands.put(m.SubscribeRequest(subscribe=m.ChannelSubscribe(channel="outage", from_start=True), request_id=7))
        refusal = next(responses).error
        commands.close()
        assert (refusal.code, refusal.request_id) == ("unavailable", 7)
    finally:
        assert subprocess.run([script, "up", data_dir], capture_output=True, timeout=120).returncode == 0
    wait_for(lambda: httpx.get(f"{a.url}/readyz", timeout=10).status_code == 200, timeout=30)
    assert publish(a, "outage", 3)["offset"] == 2  # the refused publish wrote nothing
