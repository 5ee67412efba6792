"""Issue 15, 1b: every HTTP/1 request gets an answer, and no connection is held by a client that
sends its request too slowly. The probe speaks raw bytes, as an attacker would."""

import socket
import time

import pytest

from conftest import AUTH


@pytest.fixture
def strict(make_herald):
    """A server with short request deadlines, so the tests need not wait ten seconds."""
    return make_herald(config={"head-timeout": 2, "min-body-rate": 50})


def connect(herald, timeout=10):
    host, port = herald.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_until_closed(connection):
    """Everything the server sends until it closes; fails if it stays open past the timeout."""
    answer = b""
    while chunk := connection.recv(65536):
        answer += chunk
    return answer


def status_of(answer):
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def assert_closing_problem(answer, status, code):
    head, _, body = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == status, answer[:300]
    lowered = head.lower()
    assert b"content-type: application/problem+json" in lowered
    assert b"connection: close" in lowered
    assert f'"code":"{code}"'.encode() in body, body


def alive(herald):
    with herald.client() as api:
        assert api.get("/healthz").status_code == 200
    assert herald.proc.poll() is None, "the server died"


MALFORMED = [
    ("unknown method", b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not-implemented"),
    ("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 505, "version-not-supported"),
    ("space in target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed-request"),
    ("0xFF in target", b"GET /a\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed-request"),
    ("NUL in a header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, "malformed-request"),
    ("bare CR in a header", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400, "malformed-request"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n", 400, "malformed-request"),
    ("1 MiB header", b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (1 << 20) + b"\r\n\r\n", 431, "headers-too-large"),
    ("10,000 headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: a\r\n" * 10_000 + b"\r\n", 431, "headers-too-large"),
    ("100 KB target", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri-too-long"),
    ("bad Content-Length", b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
     "malformed-request"),
    ("Content-Length and Transfer-Encoding", b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request"),
    ("two Content-Lengths", b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n"
     b"\r\nabcd", 400, "malformed-request"),
    ("Transfer-Encoding gzip, chunked", b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\n"
     b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400, "malformed-request"),
]


@pytest.mark.parametrize("request_bytes, status, code", [case[1:] for case in MALFORMED],
                         ids=[case[0] for case in MALFORMED])
def test_a_malformed_request_is_answered_and_its_connection_closed(herald, request_bytes, status, code):
    with connect(herald) as connection:
        try:
            connection.sendall(request_bytes)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the answer may come before the whole request has been sent
        answer = read_until_closed(connection)
    assert_closing_problem(answer, status, code)
    alive(herald)
    assert not [line for line in herald.output if "error" in line.lower()], "".join(herald.output[-20:])


def test_a_declared_body_over_the_limit_is_a_413_at_once(herald):
    with connect(herald, timeout=5) as connection:
        connection.sendall(b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode()
                           + b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
        answer = read_until_closed(connection)
    assert_closing_problem(answer, 413, "too-large")
    with herald.client() as api:
        assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def test_a_grpc_web_body_may_be_as_large_as_its_encoding_of_the_limit(herald):
    # max-body-bytes is 65,536: base64 of a framed message of that size is 87,388 bytes, which
    # the shield must let through to the gRPC-Web route (which answers it, not with a 413).
    with connect(herald, timeout=5) as connection:
        connection.sendall(b"POST /herald.v1.Herald/GetCheck HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/grpc-web-text\r\nContent-Length: 87000\r\n\r\n")
        connection.sendall(b"A" * 87000)
        answer = connection.recv(65536)
    assert status_of(answer) == 200, answer[:300]


def test_a_head_sent_byte_by_byte_is_cut_after_the_head_timeout(strict):
    with connect(strict) as connection:
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        answer = b""
        for byte in request:
            try:
                connection.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            connection.settimeout(0.5)
            try:
                answer += connection.recv(65536)
            except socket.timeout:
                continue
            if answer:
                break
        connection.settimeout(10)
        answer += read_until_closed(connection)
        elapsed = time.monotonic() - started
    assert_closing_problem(answer, 408, "request-timeout")
    assert elapsed < 8, f"held for {elapsed:.1f} s with a head-timeout of 2 s"
    alive(strict)


def test_a_body_shorter_than_its_content_length_is_cut_by_the_body_rate(strict):
    with connect(strict) as connection:
        started = time.monotonic()
        connection.sendall(b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode()
                           + b"\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"kind\":")
        answer = read_until_closed(connection)
        elapsed = time.monotonic() - started
    assert_closing_problem(answer, 408, "request-timeout")
    assert elapsed < 8, f"held for {elapsed:.1f} s"
    with strict.client() as api:
        assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def test_a_slow_but_steady_body_is_accepted(strict):
    # 50 bytes a second are required; this body arrives at about 100 bytes a second for 3 s.
    body = b'{"type":"slow","data":"' + b"a" * 250 + b'"}'
    with connect(strict) as connection:
        connection.sendall(b"POST /api/v1/channels/slow/events HTTP/1.1\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode()
                           + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                           + b"\r\nConnection: close\r\n\r\n")
        for start in range(0, len(body), 10):
            connection.sendall(body[start:start + 10])
            time.sleep(0.1)
        answer = read_until_closed(connection)
    assert status_of(answer) in (200, 201), answer[:300]


def test_a_bad_request_pipelined_after_a_good_one_is_answered_after_it(herald):
    with connect(herald) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nFOO / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_until_closed(connection)
    first, _, rest = answer.partition(b"HTTP/1.1 501")
    assert status_of(first) == 200, answer[:300]
    assert_closing_problem(b"HTTP/1.1 501" + rest, 501, "not-implemented")


def test_keep_alive_still_serves_many_requests_on_one_connection(herald):
    with connect(herald) as connection:
        for _ in range(3):
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = connection.recv(65536)
            assert status_of(answer) == 200, answer


GET_ROUTES = ["/healthz", "/readyz", "/openapi.yaml", "/herald.js", "/api/v1/checks", "/api/v1/channels/x/events",
              "/api/v1/subscription", "/api/v1/deliveries"]


@pytest.mark.parametrize("path", GET_ROUTES)
def test_head_is_served_wherever_get_is(herald, path):
    with herald.client(headers=AUTH) as api:
        got = api.get(path)
        head = api.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]


@pytest.mark.parametrize("format_, content_type", [("sse", "text/event-stream"), ("ndjson", "application/x-ndjson"),
                                                   ("html", "text/html; charset=utf-8")])
def test_head_of_a_stream_has_its_headers_and_no_length_and_holds_nothing(herald, format_, content_type):
    with herald.client(headers=AUTH, timeout=5) as api:
        head = api.head(f"/api/v1/channels/x/events?format={format_}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == content_type
    assert "content-length" not in head.headers  # the stream's GET has no length


@pytest.mark.parametrize("method, path, allow", [
    ("PUT", "/api/v1/checks", "GET, HEAD, OPTIONS, POST"),
    ("PATCH", "/api/v1/checks/x", "DELETE, GET, HEAD, OPTIONS"),
    ("DELETE", "/healthz", "GET, HEAD, OPTIONS"),
    ("GET", "/api/v1/checks/x/complete", "OPTIONS, POST"),
    ("POST", "/api/v1/subscription/x", "DELETE, GET, HEAD, OPTIONS, PUT"),
])
def test_another_method_on_a_known_path_is_a_405_with_allow(herald, method, path, allow):
    with herald.client(headers=AUTH) as api:
        answer = api.request(method, path, json={})
        options = api.options(path)
        missing = api.request(method, "/api/v1/nothing-here")
    assert answer.status_code == 405, answer.text
    assert answer.headers["allow"] == allow
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "method-not-allowed"
    assert options.status_code == 204 and options.headers["allow"] == allow
    assert missing.status_code == 404
