"""kill -9 at any moment loses no acknowledged check; delay checks keep their original deadline."""

import threading
import time

import httpx

from conftest import AUTH, create, wait_for


def iso_ms(text):
    from datetime import datetime
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=__import__("datetime").timezone.utc).timestamp() * 1000)


def test_a_delay_check_resumes_with_its_original_deadline(make_herald):
    herald = make_herald()
    with herald.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 6000, "result": "kept"}}).json()
    time.sleep(1)
    herald.kill9()
    time.sleep(2)
    herald.start()
    with herald.client() as api:
        done = api.get(f"/api/v1/checks/{check['id']}", params={"wait": 30}).json()
    assert done["state"] == "done" and done["result"] == "kept"
    elapsed = iso_ms(done["completed_at"]) - iso_ms(done["created_at"])
    # Due 6 s after creation; a timer restarted from scratch would end after about 9 s.
    assert 6000 <= elapsed < 8500, elapsed


def test_kill_9_mid_work_loses_no_acknowledged_check(make_herald):
    herald = make_herald()
    acknowledged, stop = [], threading.Event()

    def hammer():
        with httpx.Client(base_url=herald.url, timeout=5) as client:
            n = 0
            while not stop.is_set():
                n += 1
                kind = [{"kind": "delay", "params": {"ms": 300}}, {"kind": "external"}][n % 2]
                try:
                    response = client.post("/api/v1/checks", json=kind)
                except httpx.HTTPError:
                    return
                if response.status_code == 202:
                    acknowledged.append(response.json()["id"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) >= 100, timeout=60)
    herald.kill9()
    stop.set()
    for thread in threads:
        thread.join(10)
    herald.start()
    with herald.client() as api:
        for check_id in acknowledged:
            response = api.get(f"/api/v1/checks/{check_id}")
            assert response.status_code == 200, check_id
            check = response.json()
            if check["kind"] == "external":
                api.post(f"/api/v1/checks/{check_id}/complete", json={"state": "done"}, headers=AUTH)
            ended = api.get(f"/api/v1/checks/{check_id}", params={"wait": 30}).json()
            assert ended["state"] == "done", ended
            events = api.get(f"/api/v1/checks/{check_id}/events", params={"since": 0}).json()["events"]
            assert [e["offset"] for e in events] == [1, 2] and events[-1]["type"] == "check.done"


def test_published_events_survive_kill_9(make_herald):
    herald = make_herald()
    with herald.client() as api:
        offsets = [api.post("/api/v1/channels/durable/events", json={"type": "t", "data": n},
                            headers=AUTH).json()["offset"] for n in range(20)]
    herald.kill9()
    herald.start()
    with herald.client() as api:
        read = api.get("/api/v1/channels/durable/events", params={"since": 0}).json()
        assert [e["offset"] for e in read["events"]] == offsets == list(range(1, 21))
        nxt = api.post("/api/v1/channels/durable/events", json={"type": "t", "data": 20}, headers=AUTH).json()
        assert nxt["offset"] == 21 and nxt["epoch"] == read["epoch"]
