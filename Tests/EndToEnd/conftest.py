"""Shared fixtures: a real `herald serve` process per test, on fresh ports and a fresh data directory."""

import hashlib
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import threading
import time

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("HERALD_BIN", str(ROOT / ".build" / "debug" / "herald"))
API_KEY = "e2e-test-key"
# HERALD_TEST_STORE=postgres runs every node on PostgreSQL (HERALD_TEST_POSTGRES), one schema per
# data directory, so a node restarted on its directory finds its data; scripts/test.sh runs a share
# of the suite that way.
ON_POSTGRES = os.environ.get("HERALD_TEST_STORE") == "postgres"


def postgres_store(data_dir):
    url = os.environ.get("HERALD_TEST_POSTGRES")
    assert url, "HERALD_TEST_STORE=postgres needs HERALD_TEST_POSTGRES (scripts/test.sh starts a throwaway server)"
    schema = "e2e_" + hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


class Herald:
    """One herald serve process; restartable on the same data directory."""

    def __init__(self, data_dir, args=(), env=None, preexec=None):
        self.data_dir = str(data_dir)
        self.preexec = preexec
        self.args = list(args)
        self.env = env or {}
        self.proc = None
        self.url = None
        self.grpc_port = None
        self.lines = queue.Queue()
        self.output = []

    def command(self):
        store = ["--store", postgres_store(self.data_dir)] if ON_POSTGRES and "--store" not in self.args else []
        return [BIN, "serve", "--port", "0", "--grpc-port", "0", "--data-dir", self.data_dir,
                "--api-key", API_KEY, *store, *self.args]

    def start(self, timeout=60):
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(self.env)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, preexec_fn=self.preexec)
        self.lines = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc, self.lines), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = re.search(r"listening on (https?://\S+)", line)
            if match:
                self.url = match.group(1)
                grpc = re.search(r"gRPC on port (\d+)", line)
                self.grpc_port = int(grpc.group(1)) if grpc else None
                return self
        raise RuntimeError("herald did not start:\n" + "".join(self.output))

    def _pump(self, proc, lines):
        for line in proc.stdout:
            self.output.append(line)
            lines.put(line)

    def client(self, **kwargs):
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 30), **kwargs)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout=30):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        elif self.proc and self.proc.returncode < 0:
            # Ended by a signal before the test's end (sent by the test, or a crash): the output
            # shows with the test's report if the test failed.
            print(f"herald had ended by signal {-self.proc.returncode}; its output:\n" + "".join(self.output))


@pytest.fixture
def make_herald(tmp_path):
    """Factory: make_herald(*args, env={}, config={}) starts a herald; all are killed after the test."""
    started = []

    def make(*args, env=None, data_dir=None, start=True, config=None, preexec=None):
        if config is not None:
            path = tmp_path / f"config{len(started)}.json"
            path.write_text(json.dumps(config))
            args = (*args, "--config", str(path))
        herald = Herald(data_dir or tmp_path / f"data{len(started)}", args, env, preexec)
        started.append(herald)
        return herald.start() if start else herald

    yield make
    for herald in started:
        herald.stop()


@pytest.fixture
def herald(make_herald):
    return make_herald()


@pytest.fixture
def api(herald):
    with herald.client() as client:
        yield client


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def create(client, body, **headers):
    return client.post("/api/v1/checks", json=body, headers=headers)


def wait_for(predicate, timeout=20.0, interval=0.05):
    """Polls predicate until it returns a truthy value (a deadline, never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met within %.1f s" % timeout)


def assert_problem(response, status, detail=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["type"] and body["title"] and body["detail"]
    if detail:
        assert detail in body["detail"], body["detail"]
    return body
