"""`herald serve`: start-up line, refusals with one-line reasons, configuration precedence, health, drain."""

import json
import signal
import socket
import subprocess
import time

import httpx

from conftest import BIN, API_KEY, create
from test_long_polling import in_background


def run(*args, env=None, timeout=30):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_health_and_readiness(api):
    assert api.get("/healthz").status_code == 200
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_a_bad_flag_exits_non_zero_with_one_line(tmp_path):
    for args, reason in [(["--port", "http"], "port"), (["--bogus"], "bogus"), (["--store", "mysql://x"], "store"),
                         (["--tls-cert", "x.pem"], "tls-key"),
                         (["--tls-cert", "/missing/cert.pem", "--tls-key", "/missing/key.pem"], "TLS certificate"),
                         (["--node-id", "a b"], "node-id must"), (["--postgres-pool-size", "0"], "postgres-pool-size must"),
                         (["--postgres-query-timeout", "1"], "postgres-query-timeout must"),
                         (["--store", "postgres://herald@127.0.0.1:1/herald?sslmode=disable"],
                          "cannot use the PostgreSQL store at postgres://herald@127.0.0.1:1/herald")]:
        result = run("serve", "--data-dir", str(tmp_path), *args)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], result.stderr


def test_a_bad_config_file_exits_non_zero(tmp_path):
    config = tmp_path / "bad.json"
    config.write_text('{"port": "eighty"}')
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1 and "port" in result.stderr
    config.write_text("not json")
    result = run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode != 0 and "JSON" in result.stderr


def test_a_taken_port_exits_non_zero_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), "--grpc-port", "0", "--data-dir", str(tmp_path / "d"))
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "in use" in result.stderr, result.stderr


def test_a_data_directory_is_used_by_one_process_only(herald):
    result = run("serve", "--port", "0", "--grpc-port", "0", "--data-dir", herald.data_dir)
    assert result.returncode != 0 and "in use" in result.stderr


def test_a_generated_api_key_is_printed_once_and_works(make_herald, tmp_path):
    herald = make_herald(start=False)
    herald.command = lambda: [BIN, "serve", "--port", "0", "--grpc-port", "0", "--data-dir", str(tmp_path / "g")]
    herald.start()
    printed = [line for line in herald.output if "API key" in line]
    assert len(printed) == 1
    key = printed[0].split("API key ")[1].split()[0]
    with herald.client() as api:
        assert api.get("/api/v1/checks", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_flag_beats_environment_beats_file(make_herald, tmp_path):
    config = tmp_path / "herald.json"
    config.write_text(json.dumps({"max-wait": 3, "history-max-events": 2}))
    env = {"HERALD_MAX_WAIT": "2", "HERALD_CONFIG": str(config)}
    herald = make_herald(env=env)
    with herald.client() as api:
        check = create(api, {"kind": "external"}).json()
        response = api.get(f"/api/v1/checks/{check['id']}", params={"wait": 30})
        assert response.headers["preference-applied"] == "wait=2"  # environment over file
        for n in range(4):
            api.post("/api/v1/channels/c/events", json={"type": "t", "data": n},
                     headers={"Authorization": f"Bearer {API_KEY}"})
        read = api.get("/api/v1/channels/c/events", params={"since": 0}).json()
        assert [e["offset"] for e in read["events"]] == [3, 4]  # the file's history bound applies
    # The --api-key flag given by the fixture beats HERALD_API_KEY.
    herald2 = make_herald(env={"HERALD_API_KEY": "from-the-environment"})
    with herald2.client() as api:
        assert api.get("/api/v1/checks", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


def test_sigterm_answers_held_long_polls_and_exits_zero(herald):
    with herald.client() as api:
        check = create(api, {"kind": "external"}).json()
        held = in_background(lambda: httpx.get(f"{herald.url}/api/v1/checks/{check['id']}", params={"wait": 50},
                                               timeout=60))
        time.sleep(0.5)
        started = time.monotonic()
        assert herald.terminate(timeout=30) == 0
        response = held()
        assert response.status_code == 200 and response.json()["state"] == "processing"
        assert time.monotonic() - started < 20  # drained, not held for the 50 s wait


def test_checks_survive_a_graceful_restart(make_herald):
    herald = make_herald()
    with herald.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 1500}}).json()
    assert herald.terminate() == 0
    herald.start()
    with herald.client() as api:
        done = api.get(f"/api/v1/checks/{check['id']}", params={"wait": 20}).json()
        assert done["state"] == "done"


def test_a_connection_that_never_sends_a_byte_neither_blocks_sigterm_nor_stays_forever(make_herald):
    herald = make_herald(config={"idle-timeout": 2})
    host, port = herald.url.removeprefix("http://").rsplit(":", 1)
    # A browser's speculative preconnect: the connection opens and nothing is ever sent.
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        assert silent.recv(1) == b""  # closed by the server after the idle timeout
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        herald.proc.send_signal(signal.SIGTERM)
        assert herald.proc.wait(timeout=8) == 0
        assert silent.recv(1) == b""
