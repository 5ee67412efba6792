"""Issue 18: requests of the API served on the event loop. A keep-alive connection that polls or
publishes is served without a task of its own; it polls again and again, publishes, pipelines,
sends a body in pieces (Hummingbird then serves it), turns to other requests (an upgrade
included), idles, and is drained on shutdown. The probe speaks raw bytes on one socket, so every
answer is known to come on the same connection."""

import json
import socket
import threading
import time

from conftest import API_KEY, AUTH


def connect(herald, timeout=30):
    host, port = herald.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


class Wire:
    """One connection, answers read one by one by their Content-Length."""

    def __init__(self, connection):
        self.connection = connection
        self.pending = b""

    def send(self, *requests):
        self.connection.sendall(b"".join(requests))

    def _fill(self):
        chunk = self.connection.recv(65536)
        assert chunk, f"the server closed the connection; unread: {self.pending!r}"
        self.pending += chunk

    def head(self):
        """The next answer's status and headers (names in lower case)."""
        while b"\r\n\r\n" not in self.pending:
            self._fill()
        head, self.pending = self.pending.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split(" ")[1]), {name.lower(): value for name, value in headers.items()}

    def answer(self):
        """The next answer: status, headers and body."""
        status, headers = self.head()
        length = int(headers["content-length"])
        while len(self.pending) < length:
            self._fill()
        body, self.pending = self.pending[:length], self.pending[length:]
        return status, headers, body

    def closed(self):
        """Whether the server closes the connection (within the socket's timeout) with nothing more."""
        try:
            return self.connection.recv(1) == b""
        except ConnectionResetError:
            return True


def get(path, *headers):
    lines = [f"GET {path} HTTP/1.1", "Host: herald", f"Authorization: Bearer {API_KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path, body):
    data = json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", "Host: herald", f"Authorization: Bearer {API_KEY}",
             "Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def publish_soon(herald, channel, delay=0.5):
    """Publishes an event on another connection after `delay`; returns a callable that waits for
    the publisher's answer (call it before the test ends and its server goes)."""
    answers = []

    def run():
        time.sleep(delay)
        with herald.client() as other:
            answers.append(other.post(f"/api/v1/channels/{channel}/events", json={"type": "t", "data": {}},
                                      headers=AUTH).status_code)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def published():
        thread.join(30)
        assert answers == [201]
    return published


def test_one_connection_polls_again_and_again_then_asks_for_anything(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        # Held until its deadline: the answer says where to come back from.
        wire.send(get("/api/v1/channels/lp-a/events?wait=1"))
        status, headers, body = wire.answer()
        assert status == 200 and headers["content-type"] == "application/json"
        assert "connection" not in headers and "date" in headers
        timed_out = json.loads(body)
        assert timed_out["events"] == [] and timed_out["recovered"] is True
        # Held, and answered by an event published on another connection.
        published = publish_soon(herald, "lp-a")
        wire.send(get(f"/api/v1/channels/lp-a/events?since={timed_out['next']}&wait=20"))
        status, _, body = wire.answer()
        published()
        woken = json.loads(body)
        assert status == 200 and [event["offset"] for event in woken["events"]] == [1]
        # A publish, on the same connection.
        wire.send(post("/api/v1/channels/lp-a/events", {"type": "t", "data": {"n": 2}}))
        status, _, body = wire.answer()
        assert status == 201 and json.loads(body)["offset"] == 2
        # A poll that need not wait, after it.
        wire.send(get("/api/v1/channels/lp-a/events?since=1&wait=20"))
        status, _, body = wire.answer()
        assert status == 200 and [event["offset"] for event in json.loads(body)["events"]] == [2]
        wire.send(get("/healthz"))
        assert wire.answer()[0] == 200


def test_pipelined_polls_are_answered_in_order_and_on_time(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        published = publish_soon(herald, "lp-b", delay=1.0)
        # The second waits, unread, while the first is held; the third waits for both.
        wire.send(get("/api/v1/channels/lp-b/events?since=0&wait=20"),
                  get("/api/v1/channels/lp-c/events?wait=1"),
                  get("/healthz"))
        first, second, third = wire.answer(), wire.answer(), wire.answer()
        published()
        assert first[0] == 200 and json.loads(first[2])["channel"] == "lp-b"
        assert [event["offset"] for event in json.loads(first[2])["events"]] == [1]
        assert second[0] == 200 and json.loads(second[2])["channel"] == "lp-c"
        assert json.loads(second[2])["events"] == []
        assert third[0] == 200
        # Hummingbird has the connection now, and reads what comes next.
        wire.send(get("/healthz"))
        assert wire.answer()[0] == 200


def test_polls_then_a_websocket_upgrade_on_the_same_connection(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        wire.send(get("/api/v1/channels/lp-d/events?wait=1"))
        assert wire.answer()[0] == 200
        wire.send(get("/api/v1/ws", "Upgrade: websocket", "Connection: Upgrade",
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"))
        status, headers = wire.head()
        assert status == 101 and headers["sec-websocket-accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_polls_then_a_stream_on_the_same_connection(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        wire.send(get("/api/v1/channels/lp-e/events?wait=1"))
        assert wire.answer()[0] == 200
        published = publish_soon(herald, "lp-e")
        wire.send(get("/api/v1/channels/lp-e/events?format=sse&since=0"))
        status, headers = wire.head()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        while b"id: " not in wire.pending:
            wire._fill()
        assert b"data: " in wire.pending
        published()


def test_a_connection_idle_between_polls_is_closed(make_herald):
    herald = make_herald(config={"idle-timeout": 1})
    with connect(herald, timeout=20) as connection:
        wire = Wire(connection)
        # Held longer than the idle timeout: a held poll is not idle.
        wire.send(get("/api/v1/channels/lp-f/events?wait=2"))
        assert wire.answer()[0] == 200
        started = time.monotonic()
        assert wire.closed()
        assert time.monotonic() - started < 15


def test_a_held_poll_is_answered_and_its_connection_closed_on_shutdown(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        wire.send(get("/api/v1/channels/lp-g/events?wait=60"))
        time.sleep(0.5)
        started = time.monotonic()
        herald.proc.send_signal(15)
        status, headers, body = wire.answer()
        assert status == 200 and json.loads(body)["events"] == []
        assert headers["connection"] == "close"
        assert wire.closed()
        assert time.monotonic() - started < 20
        assert herald.proc.wait(timeout=30) == 0


def test_a_stream_the_head_does_not_show_is_still_a_stream(herald):
    # A percent-encoded format, and Accept split over two fields: the router sees streams.
    for request in (get("/api/v1/channels/lp-h/events?format=%73se&wait=30"),
                    get("/api/v1/channels/lp-h/events?wait=30", "Accept: application/json",
                        "Accept: text/event-stream")):
        with connect(herald) as connection:
            wire = Wire(connection)
            wire.send(request)
            status, headers = wire.head()
            assert status == 200 and headers["content-type"].startswith("text/event-stream")


def test_a_pipelined_head_waits_for_a_held_poll_without_a_timeout(make_herald):
    herald = make_herald(config={"head-timeout": 2})
    with connect(herald) as connection:
        wire = Wire(connection)
        # Held past the head timeout, with a second request behind it that ends past the first
        # read (512 bytes): its last bytes arrive after the first head was taken.
        wire.send(get("/api/v1/channels/lp-i/events?wait=4"),
                  get("/api/v1/channels/lp-j/events?wait=1", "X-Padding: " + "p" * 1000))
        first, second = wire.answer(), wire.answer()
        assert first[0] == 200 and json.loads(first[2])["channel"] == "lp-i"
        assert second[0] == 200 and json.loads(second[2])["channel"] == "lp-j"


def test_a_client_that_half_closes_still_gets_its_held_poll_answered(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        published = publish_soon(herald, "lp-k")
        wire.send(get("/api/v1/channels/lp-k/events?since=0&wait=20"))
        connection.shutdown(socket.SHUT_WR)
        status, headers, body = wire.answer()
        published()
        assert status == 200 and [event["offset"] for event in json.loads(body)["events"]] == [1]
        assert headers["connection"] == "close" and wire.closed()


def test_pipelined_publishes_are_answered_in_order_then_a_poll_sees_them(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        wire.send(*(post("/api/v1/channels/lp-l/events", {"type": "t", "data": {"n": n}}) for n in range(3)),
                  get("/api/v1/channels/lp-l/events?since=0&wait=20"))
        answers = [wire.answer() for _ in range(4)]
        assert [(status, json.loads(body)["offset"]) for status, _, body in answers[:3]] == [(201, 1), (201, 2),
                                                                                           (201, 3)]
        polled = json.loads(answers[3][2])
        assert [(event["offset"], event["data"]["n"]) for event in polled["events"]] == [(1, 0), (2, 1), (3, 2)]


def test_a_publish_whose_body_comes_later_is_answered_and_the_connection_goes_on(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        request = post("/api/v1/channels/lp-m/events", {"type": "t", "data": {"n": 1}})
        head, body = request.split(b"\r\n\r\n", 1)
        wire.send(head + b"\r\n\r\n" + body[:5])
        time.sleep(0.3)
        wire.send(body[5:])
        status, _, answer = wire.answer()
        assert status == 201 and json.loads(answer)["offset"] == 1
        # A held poll after it, on the same connection, woken by a publish from elsewhere.
        published = publish_soon(herald, "lp-m")
        wire.send(get("/api/v1/channels/lp-m/events?since=1&wait=20"))
        status, _, answer = wire.answer()
        published()
        assert status == 200 and [event["offset"] for event in json.loads(answer)["events"]] == [2]


def test_a_request_pipelined_behind_one_the_loop_answered_goes_on_to_hummingbird_and_is_answered(herald):
    with connect(herald, timeout=10) as connection:
        wire = Wire(connection)
        # The second says Connection: close, so the gate passes it on once the first is answered.
        last = post("/api/v1/channels/lp-n/events", {"type": "t", "data": {}})
        last = last.replace(b"Host: herald\r\n", b"Host: herald\r\nConnection: close\r\n")
        wire.send(post("/api/v1/channels/lp-n/events", {"type": "t", "data": {}}), last)
        first, second = wire.answer(), wire.answer()
        assert (first[0], json.loads(first[2])["offset"]) == (201, 1)
        assert (second[0], json.loads(second[2])["offset"]) == (201, 2)
        assert wire.closed()


def test_a_malformed_head_behind_pipelined_requests_is_answered_after_them(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        wire.send(get("/api/v1/channels/lp-o/events?wait=1"),
                  post("/api/v1/channels/lp-o/events", {"type": "t", "data": {}}),
                  b"NOT HTTP\r\n\r\n")
        held, published, refused = wire.answer(), wire.answer(), wire.answer()
        assert held[0] == 200 and json.loads(held[2])["events"] == []
        assert (published[0], json.loads(published[2])["offset"]) == (201, 1)
        assert refused[0] == 501 and refused[1]["connection"] == "close"  # not a method Herald serves


def test_shutdown_waits_for_a_request_still_arriving(herald):
    with connect(herald) as connection:
        wire = Wire(connection)
        # A chunked body goes to Hummingbird, and its first chunk only comes now.
        head = (f"POST /api/v1/channels/lp-p/events HTTP/1.1\r\nHost: herald\r\n"
                f"Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n").encode()
        body = json.dumps({"type": "t", "data": {}}).encode()
        wire.send(head + b"%x\r\n" % 5 + body[:5] + b"\r\n")
        time.sleep(0.5)
        herald.proc.send_signal(15)
        time.sleep(1.0)
        assert herald.proc.poll() is None, "Herald exited with a request in flight"
        rest = body[5:]
        wire.send(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
        status, _, answer = wire.answer()
        assert status == 201 and json.loads(answer)["offset"] == 1
        assert herald.proc.wait(timeout=30) == 0
