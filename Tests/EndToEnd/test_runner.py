"""The runner: http and tcp kinds against real local servers, the SSRF guard, concurrency and timeouts."""

import http.server
import socket
import threading
import time

import pytest

from conftest import AUTH, assert_problem, create, wait_for


class Target:
    """A real HTTP server on 127.0.0.1 that records concurrency and answers after a delay."""

    def __init__(self, status=200, delay=0.0):
        target = self
        self.status, self.delay = status, delay
        self.active = self.peak = self.requests = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                with target.lock:
                    target.active += 1
                    target.requests += 1
                    target.peak = max(target.peak, target.active)
                time.sleep(target.delay)
                with target.lock:
                    target.active -= 1
                try:
                    self.send_response(target.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def target():
    server = Target()
    yield server
    server.close()


def ended(api, check_id):
    return wait_for(lambda: (lambda c: c if c["state"] != "processing" else None)(
        api.get(f"/api/v1/checks/{check_id}").json()), timeout=30)


def test_an_http_check_reports_status_latency_and_ok(make_herald, target):
    herald = make_herald("--allow-private-targets")
    with herald.client() as api:
        check = create(api, {"kind": "http", "params": {"url": f"http://127.0.0.1:{target.port}/health"}}).json()
        result = ended(api, check["id"])
        assert result["state"] == "done" and result["result"]["status"] == 200 and result["result"]["ok"] is True
        assert isinstance(result["result"]["latency_ms"], int)
        target.status = 503
        check = create(api, {"kind": "http", "params": {"url": f"http://localhost:{target.port}/", "method": "HEAD"}})
        result = ended(api, check.json()["id"])
        assert result["result"]["status"] == 503 and result["result"]["ok"] is False


def test_a_tcp_check_reports_whether_it_connected(make_herald, target):
    herald = make_herald("--allow-private-targets")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    with herald.client() as api:
        up = create(api, {"kind": "tcp", "params": {"host": "127.0.0.1", "port": target.port}}).json()
        down = create(api, {"kind": "tcp", "params": {"host": "127.0.0.1", "port": dead_port}}).json()
        assert ended(api, up["id"])["result"]["connected"] is True
        result = ended(api, down["id"])
        assert result["state"] == "done" and result["result"]["connected"] is False


def test_a_hanging_target_fails_the_check_at_its_timeout(make_herald, target):
    target.delay = 30
    herald = make_herald("--allow-private-targets")
    with herald.client() as api:
        check = create(api, {"kind": "http", "params": {"url": f"http://127.0.0.1:{target.port}/", "timeout_ms": 500}})
        result = ended(api, check.json()["id"])
        assert result["state"] == "failed" and result["error"]["code"] == "timeout"


def test_the_runner_never_exceeds_its_concurrency(make_herald, target):
    target.delay = 0.4
    herald = make_herald("--allow-private-targets", config={"runner-concurrency": 2})
    with herald.client() as api:
        ids = [create(api, {"kind": "http", "params": {"url": f"http://127.0.0.1:{target.port}/"}}).json()["id"]
               for _ in range(6)]
        for check_id in ids:
            assert ended(api, check_id)["state"] == "done"
    assert target.requests == 6 and target.peak == 2


@pytest.mark.parametrize("params", [
    {"kind": "http", "params": {"url": "http://127.0.0.1:9/"}},
    {"kind": "http", "params": {"url": "http://localhost/"}},
    {"kind": "http", "params": {"url": "http://[::1]/"}},
    {"kind": "http", "params": {"url": "http://169.254.169.254/latest/meta-data/"}},
    {"kind": "http", "params": {"url": "http://10.0.0.1/"}},
    {"kind": "http", "params": {"url": "http://[::ffff:127.0.0.1]/"}},
    {"kind": "tcp", "params": {"host": "192.168.1.1", "port": 22}},
    {"kind": "tcp", "params": {"host": "localhost", "port": 5432}},
    {"kind": "tcp", "params": {"host": "fd00::1", "port": 80}},
])
def test_private_targets_are_refused_without_the_flag(api, params):
    assert_problem(create(api, params), 422, "not a public address")
    assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []
