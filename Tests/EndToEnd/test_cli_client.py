"""The `herald` CLI as a client (HeraldClient): creating and watching checks over every
transport, negotiating through hostile nginx proxies, publishing and subscribing across a
server restart."""

import json
import subprocess
import threading

import pytest

from conftest import API_KEY, BIN, wait_for
from test_browser_client import free_port, nginx  # noqa: F401  (the nginx fixture)


def cli(*args, timeout=60):
    return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("transport", ["auto", "ws", "sse", "ndjson", "long-polling"])
def test_check_create_watch_follows_the_check_to_its_end(herald, transport):
    answer = cli("check", "create", "--url", herald.url, "--kind", "delay", "--params", '{"ms": 600, "result": {"x": 1}}',
                 "--watch", "--transport", transport)
    assert answer.returncode == 0, answer.stderr
    check = json.loads(answer.stdout)
    assert check["state"] == "done" and check["result"] == {"x": 1}
    expected = {"auto": "websocket", "ws": "websocket"}.get(transport, transport)
    assert "processing" in answer.stderr and "done" in answer.stderr and f"via {expected}" in answer.stderr


def test_watch_exits_1_for_a_failed_check_and_bad_flags_get_one_line(herald):
    created = cli("check", "create", "--url", herald.url, "--kind", "delay", "--params", '{"ms": 100, "outcome": "failed"}')
    assert created.returncode == 0, created.stderr
    check_id = json.loads(created.stdout)["id"]
    watched = cli("watch", check_id, "--url", herald.url)
    assert watched.returncode == 1 and json.loads(watched.stdout)["state"] == "failed"
    bad = cli("watch", check_id, "--url", herald.url, "--transport", "pigeon")
    assert bad.returncode != 0 and "--transport must be auto" in bad.stderr
    refused = cli("check", "create", "--url", herald.url, "--kind", "delay", "--params", '{"ms": -1}')
    assert refused.returncode != 0 and "params.ms" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind,expected", [("no_websocket", "sse"), ("buffering", "long-polling")])
def test_watch_negotiates_through_a_hostile_proxy(herald, nginx, kind, expected):  # noqa: F811
    proxy = nginx(kind, herald.url)
    created = cli("check", "create", "--url", proxy.url, "--kind", "delay", "--params", '{"ms": 1500}')
    check_id = json.loads(created.stdout)["id"]
    watched = cli("watch", check_id, "--url", proxy.url)
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout)["state"] == "done"
    assert f"via {expected}" in watched.stderr, watched.stderr


def test_subscribe_prints_every_event_once_across_a_server_restart(make_herald, tmp_path):
    herald = make_herald("--port", str(free_port()))  # the same port after the restart
    subscriber = subprocess.Popen([BIN, "subscribe", "restart", "--url", herald.url, "--since", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(subscriber.stdout), daemon=True).start()
    try:
        for n in range(1, 11):
            published = cli("publish", "restart", "--url", herald.url, "--api-key", API_KEY, "--type", "tick",
                            "--data", json.dumps({"n": n}))
            assert published.returncode == 0, published.stderr
            assert json.loads(published.stdout)["offset"] == n
        wait_for(lambda: len(lines) >= 10, timeout=30)
        herald.kill9()
        herald.start()
        for n in range(11, 21):
            assert cli("publish", "restart", "--url", herald.url, "--api-key", API_KEY, "--data",
                       json.dumps({"n": n})).returncode == 0
        wait_for(lambda: len(lines) >= 20, timeout=60)
    finally:
        subscriber.terminate()
        _, errors = subscriber.communicate(timeout=10)
    events = [json.loads(line) for line in lines]
    assert [event["offset"] for event in events] == list(range(1, 21))
    assert [event["data"]["n"] for event in events] == list(range(1, 21))
    assert "disconnected" in errors and errors.count("connected over") >= 2


@pytest.mark.parametrize("transport", ["ws", "sse", "long-polling"])
def test_subscribe_says_when_its_position_is_lost_and_goes_on_with_what_is_kept(make_herald, transport):
    herald = make_herald(config={"history-max-events": 3})
    published = [cli("publish", "lost", "--url", herald.url, "--api-key", API_KEY, "--data", str(n)) for n in range(10)]
    epoch = json.loads(published[-1].stdout)["epoch"]
    # An epoch may begin with "-" (one in 64): given as --epoch=<epoch>, it is not taken for an option.
    subscriber = subprocess.Popen([BIN, "subscribe", "lost", "--url", herald.url, "--since", "2", f"--epoch={epoch}",
                                   "--transport", transport], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(subscriber.stdout), daemon=True).start()
    failure = None
    try:
        wait_for(lambda: len(lines) >= 3, timeout=30)
        assert cli("publish", "lost", "--url", herald.url, "--api-key", API_KEY, "--data", "10").returncode == 0
        wait_for(lambda: len(lines) >= 4, timeout=30)
    except AssertionError as error:
        failure = error
    finally:
        subscriber.terminate()
        _, errors = subscriber.communicate(timeout=10)
    # What the subscriber said goes with a failure.
    assert failure is None, f"{failure}; lines {lines}; the subscriber said: {errors[-3000:]}"
    # Offsets 3 to 7 were trimmed: the client is told, once, and gets what is kept, then the rest.
    assert [json.loads(line)["offset"] for line in lines] == [8, 9, 10, 11]
    assert errors.count("position lost on lost") == 1, errors
