"""Long polling (check and channel), JSONP over plain HTTP, and channel publishing."""

import json
import re
import threading
import time

from conftest import AUTH, assert_problem, create


def in_background(function):
    """Runs function in a thread; returns a callable that joins and returns its result."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("value", function()), daemon=True)
    thread.start()

    def join(timeout=60):
        thread.join(timeout)
        assert not thread.is_alive(), "the long poll never answered"
        return box["value"]
    return join


def test_a_long_poll_is_answered_by_the_change_not_the_timeout(api, herald):
    check = create(api, {"kind": "external"}).json()
    with herald.client() as other:
        pending = in_background(lambda: other.get(f"/api/v1/checks/{check['id']}", params={"wait": 50}))
        time.sleep(0.5)  # let the poll be held; the assertion below is on content, not time
        started = time.monotonic()
        api.post(f"/api/v1/checks/{check['id']}/complete", json={"state": "done", "result": 1}, headers=AUTH)
        response = pending()
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.json()["state"] == "done"
    assert response.headers["etag"] == '"2"'
    # A 50 s poll answered well before its timeout: woken by the event, not by a timer.
    assert elapsed < 10


def test_a_long_poll_with_an_etag_waits_for_a_newer_version(api, herald):
    check = create(api, {"kind": "delay", "params": {"ms": 400}}).json()
    response = api.get(f"/api/v1/checks/{check['id']}", headers={"Prefer": "wait=20", "If-None-Match": '"1"'})
    assert response.status_code == 200 and response.json()["version"] == 2
    assert response.headers["preference-applied"] == "wait=20"


def test_a_long_poll_times_out_with_the_unchanged_check(api):
    check = create(api, {"kind": "external"}).json()
    response = api.get(f"/api/v1/checks/{check['id']}", params={"wait": 1})
    assert response.status_code == 200 and response.json()["state"] == "processing"
    assert response.json()["version"] == 1


def test_wait_is_capped_and_validated(make_herald):
    herald = make_herald(config={"max-wait": 2})
    with herald.client() as api:
        check = create(api, {"kind": "external"}).json()
        response = api.get(f"/api/v1/checks/{check['id']}", params={"wait": 3600})
        assert response.status_code == 200 and response.headers["preference-applied"] == "wait=2"
        assert_problem(api.get(f"/api/v1/checks/{check['id']}", params={"wait": "soon"}), 422, "wait")
        assert_problem(api.get(f"/api/v1/checks/{check['id']}", params={"wait": -1}), 422, "wait")


def test_jsonp_wraps_the_check_and_refuses_unsafe_callbacks(api):
    check = create(api, {"kind": "external"}).json()
    response = api.get(f"/api/v1/checks/{check['id']}", params={"callback": "app.onCheck"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert response.headers["x-content-type-options"] == "nosniff"
    match = re.fullmatch(r"/\*\*/app\.onCheck\((.*)\);", response.text, re.S)
    assert match and json.loads(match.group(1))["id"] == check["id"]
    for bad in ["alert(1)//", "1abc", "a-b", "x" * 65, "<script>", "a b"]:
        assert_problem(api.get(f"/api/v1/checks/{check['id']}", params={"callback": bad}), 400, "callback")


def test_jsonp_long_poll_of_a_channel(api):
    api.post("/api/v1/channels/news/events", json={"type": "story", "data": {"title": "</script>"}}, headers=AUTH)
    response = api.get("/api/v1/channels/news/events", params={"since": 0, "callback": "cb"})
    body = response.text
    assert body.startswith("/**/cb(") and "</script>" not in body
    assert json.loads(body[len("/**/cb("):-2])["events"][0]["data"] == {"title": "</script>"}


def test_channel_publish_then_poll_from_an_offset(api):
    published = [api.post("/api/v1/channels/orders/events", json={"type": "order.paid", "data": {"n": n}},
                          headers=AUTH) for n in range(3)]
    assert [p.status_code for p in published] == [201] * 3
    events = [p.json() for p in published]
    assert [e["offset"] for e in events] == [1, 2, 3] and len({e["epoch"] for e in events}) == 1
    assert events[0]["channel"] == "orders" and events[0]["type"] == "order.paid" and events[0]["data"] == {"n": 0}
    read = api.get("/api/v1/channels/orders/events", params={"since": 1, "epoch": events[0]["epoch"]}).json()
    assert read["recovered"] is True and read["next"] == 3 and read["epoch"] == events[0]["epoch"]
    assert [e["offset"] for e in read["events"]] == [2, 3]


def test_a_channel_long_poll_is_answered_by_the_next_publish(api, herald):
    with herald.client() as other:
        pending = in_background(lambda: other.get("/api/v1/channels/live/events", params={"since": 0, "wait": 50}))
        time.sleep(0.5)
        api.post("/api/v1/channels/live/events", json={"type": "tick", "data": 1}, headers=AUTH)
        read = pending().json()
    assert read["recovered"] and [e["data"] for e in read["events"]] == [1] and read["next"] == 1


def test_a_channel_long_poll_without_since_waits_for_new_events_only(api, herald):
    api.post("/api/v1/channels/fresh/events", json={"type": "old", "data": 0}, headers=AUTH)
    with herald.client() as other:
        pending = in_background(lambda: other.get("/api/v1/channels/fresh/events", params={"wait": 50}))
        time.sleep(0.5)
        api.post("/api/v1/channels/fresh/events", json={"type": "new", "data": 1}, headers=AUTH)
        read = pending().json()
    assert [e["type"] for e in read["events"]] == ["new"]


def test_a_position_older_than_the_history_gets_the_loss_signal(make_herald):
    herald = make_herald(config={"history-max-events": 3})
    with herald.client() as api:
        for n in range(6):
            api.post("/api/v1/channels/short/events", json={"type": "t", "data": n}, headers=AUTH)
        read = api.get("/api/v1/channels/short/events", params={"since": 1}).json()
        assert read["recovered"] is False and [e["offset"] for e in read["events"]] == [4, 5, 6]
        stale = api.get("/api/v1/channels/short/events", params={"since": 5, "epoch": "stale"}).json()
        assert stale["recovered"] is False and stale["epoch"] != "stale"
        fine = api.get("/api/v1/channels/short/events", params={"since": 5, "epoch": read["epoch"]}).json()
        assert fine["recovered"] is True and [e["offset"] for e in fine["events"]] == [6]


def test_a_check_channel_with_a_lost_position_answers_with_the_snapshot(api):
    check = create(api, {"kind": "external"}).json()
    api.post(f"/api/v1/checks/{check['id']}/complete", json={"state": "done"}, headers=AUTH)
    read = api.get(f"/api/v1/channels/check:{check['id']}/events", params={"since": 1, "epoch": "other"}).json()
    assert read["recovered"] is False and len(read["events"]) == 1
    assert read["events"][0]["type"] == "check.done" and read["events"][0]["data"]["state"] == "done"


def test_channel_publishing_is_validated(api):
    assert_problem(api.post("/api/v1/channels/a/events", json={"type": "t"}), 401)
    assert_problem(api.post("/api/v1/channels/has%20space/events", json={"type": "t"}, headers=AUTH), 422, "channel")
    assert_problem(api.post("/api/v1/channels/check:abc/events", json={"type": "t"}, headers=AUTH), 422, "check")
    assert_problem(api.post("/api/v1/channels/a/events", json={"data": 1}, headers=AUTH), 422, "type")
    assert_problem(api.post("/api/v1/channels/a/events", json={"type": "t", "x": 1}, headers=AUTH), 422, "x")
    assert_problem(api.get("/api/v1/channels/a/events", params={"since": "x"}), 422, "since")
    assert api.get("/api/v1/channels/a/events", params={"since": 0}).json()["events"] == []
