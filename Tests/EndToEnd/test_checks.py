"""The check resource: create, read (polling), list, cancel, external completion, and bad input."""

import json
import re

import pytest

from conftest import AUTH, assert_problem, create, wait_for


def test_create_answers_202_with_location_and_the_processing_check(api):
    response = create(api, {"kind": "delay", "params": {"ms": 60000, "result": {"any": "json"}}})
    assert response.status_code == 202
    check = response.json()
    assert response.headers["location"] == f"/api/v1/checks/{check['id']}"
    assert check["state"] == "processing" and check["version"] == 1 and check["kind"] == "delay"
    assert check["params"] == {"ms": 60000, "outcome": "done", "result": {"any": "json"}}
    assert check["result"] is None and check["error"] is None and check["completed_at"] is None
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", check["id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", check["created_at"])
    assert check["links"]["self"] == f"/api/v1/checks/{check['id']}"
    assert api.get(response.headers["location"]).json()["id"] == check["id"]


def test_polling_uses_etag_304_and_retry_after(api):
    check = create(api, {"kind": "external"}).json()
    first = api.get(f"/api/v1/checks/{check['id']}")
    assert first.status_code == 200 and first.headers["etag"] == '"1"'
    assert int(first.headers["retry-after"]) >= 1
    same = api.get(f"/api/v1/checks/{check['id']}", headers={"If-None-Match": '"1"'})
    assert same.status_code == 304 and same.content == b""
    api.post(f"/api/v1/checks/{check['id']}/complete", json={"state": "done", "result": 7}, headers=AUTH)
    changed = api.get(f"/api/v1/checks/{check['id']}", headers={"If-None-Match": '"1"'})
    assert changed.status_code == 200 and changed.headers["etag"] == '"2"'
    assert changed.json()["state"] == "done" and "retry-after" not in changed.headers


def test_a_delay_check_ends_with_its_outcome_and_result(api):
    done = create(api, {"kind": "delay", "params": {"ms": 50, "result": [1, 2]}}).json()
    failed = create(api, {"kind": "delay", "params": {"ms": 50, "outcome": "failed"}}).json()
    ended = wait_for(lambda: (lambda c: c if c["state"] != "processing" else None)(
        api.get(f"/api/v1/checks/{done['id']}").json()))
    assert ended["state"] == "done" and ended["result"] == [1, 2] and ended["version"] == 2
    assert ended["completed_at"] is not None
    ended = wait_for(lambda: (lambda c: c if c["state"] != "processing" else None)(
        api.get(f"/api/v1/checks/{failed['id']}").json()))
    assert ended["state"] == "failed" and ended["error"]["code"] == "failed"


def test_idempotency_key_returns_the_first_check(api):
    body = {"kind": "delay", "params": {"ms": 1000}}
    first = create(api, body, **{"Idempotency-Key": "order-42"})
    again = api.post("/api/v1/checks", content=json.dumps(body, indent=2),
                     headers={"Idempotency-Key": "order-42", "Content-Type": "application/json"})
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = create(api, {"kind": "delay", "params": {"ms": 2000}}, **{"Idempotency-Key": "order-42"})
    assert_problem(other, 422, "Idempotency-Key")
    listed = api.get("/api/v1/checks", headers=AUTH).json()["checks"]
    assert len(listed) == 1


def test_listing_needs_the_key_filters_and_pages_newest_first(api):
    ids = [create(api, {"kind": "external", "params": {"n": n}}).json()["id"] for n in range(5)]
    delay = create(api, {"kind": "delay", "params": {"ms": 60000}}).json()["id"]
    assert_problem(api.get("/api/v1/checks"), 401)
    assert_problem(api.get("/api/v1/checks", headers={"Authorization": "Bearer wrong"}), 401)
    seen, cursor = [], None
    while True:
        params = {"kind": "external", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.get("/api/v1/checks", params=params, headers=AUTH).json()
        seen += [c["id"] for c in page["checks"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    states = api.get("/api/v1/checks", params={"state": "processing"}, headers=AUTH).json()["checks"]
    assert {c["id"] for c in states} == set(ids) | {delay}
    assert_problem(api.get("/api/v1/checks", params={"state": "sleeping"}, headers=AUTH), 422, "state")
    assert_problem(api.get("/api/v1/checks", params={"limit": 0}, headers=AUTH), 422, "limit")
    assert_problem(api.get("/api/v1/checks", params={"cursor": "!!"}, headers=AUTH), 422, "cursor")


def test_cancel_ends_a_processing_check_once(api):
    check = create(api, {"kind": "delay", "params": {"ms": 60000}}).json()
    capability = {"Herald-Cancel-Token": check["cancel_token"]}
    canceled = api.delete(f"/api/v1/checks/{check['id']}", headers=capability)
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    assert canceled.json()["version"] == 2
    assert "cancel_token" not in canceled.json()
    assert_problem(api.delete(f"/api/v1/checks/{check['id']}", headers=capability), 409, "already ended")


def test_cancelling_needs_more_than_the_id(api):
    """The id reads a check; cancelling it takes its cancel token (returned once, at create),
    the server API key, or the token that created it."""
    check = create(api, {"kind": "delay", "params": {"ms": 60000}}).json()
    assert check["cancel_token"].startswith("hct_")
    url = f"/api/v1/checks/{check['id']}"
    assert_problem(api.delete(url), 401, "cancel token")
    assert_problem(api.delete(url, headers={"Herald-Cancel-Token": "hct_not-this-one"}), 403)
    assert api.get(url).json()["state"] == "processing"
    assert "cancel_token" not in api.get(url).json()
    by_query = api.delete(url, params={"cancel_token": check["cancel_token"]})
    assert by_query.status_code == 200 and by_query.json()["state"] == "canceled"
    other = create(api, {"kind": "delay", "params": {"ms": 60000}}).json()
    by_key = api.delete(f"/api/v1/checks/{other['id']}", headers=AUTH)
    assert by_key.status_code == 200 and by_key.json()["state"] == "canceled"
    events = api.get(f"/api/v1/checks/{check['id']}/events", params={"since": 0}).json()["events"]
    assert [e["type"] for e in events] == ["check.created", "check.canceled"]


def test_external_completion_needs_the_key_and_happens_once(api):
    check = create(api, {"kind": "external", "params": {"order": 42}}).json()
    url = f"/api/v1/checks/{check['id']}/complete"
    assert_problem(api.post(url, json={"state": "done"}), 401)
    assert_problem(api.post(url, json={"state": "finished"}, headers=AUTH), 422, "state")
    assert_problem(api.post(url, json={"state": "done", "error": "x"}, headers=AUTH), 422, "error")
    done = api.post(url, json={"state": "done", "result": {"ok": True}}, headers=AUTH)
    assert done.status_code == 200 and done.json()["result"] == {"ok": True}
    assert_problem(api.post(url, json={"state": "failed"}, headers=AUTH), 409)
    delay = create(api, {"kind": "delay", "params": {"ms": 60000}}).json()
    assert_problem(api.post(f"/api/v1/checks/{delay['id']}/complete", json={"state": "done"}, headers=AUTH), 409,
                   "only external checks")


@pytest.mark.parametrize("body, detail", [
    ({"kind": "nope"}, "kind 'nope' is unknown"),
    ({"params": {}}, "kind is required"),
    ({"kind": "delay", "params": {"ms": -1}}, "params.ms"),
    ({"kind": "delay", "params": {"ms": 600001}}, "params.ms"),
    ({"kind": "delay", "params": {"ms": "5"}}, "params.ms"),
    ({"kind": "delay", "params": {"ms": 5, "unknown": 1}}, "params.unknown"),
    ({"kind": "http", "params": {"url": "file:///etc/passwd"}}, "http or https"),
    ({"kind": "http", "params": {"url": "https://user:pw@example.com/"}}, "credentials"),
    ({"kind": "http", "params": {"url": "https://example.com/", "expect_status": 99}}, "expect_status"),
    ({"kind": "tcp", "params": {"host": "example.com"}}, "params.port"),
    ({"kind": "delay", "params": {"ms": 1}, "callback_url": "ftp://x"}, "callback_url"),
    ([1, 2], "JSON object"),
])
def test_invalid_parameters_get_422_and_change_nothing(api, body, detail):
    assert_problem(create(api, body), 422, detail)
    assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def test_malformed_oversized_and_non_json_bodies(api):
    headers = {"Content-Type": "application/json"}
    assert_problem(api.post("/api/v1/checks", content=b'{"kind": "delay",', headers=headers), 400, "not valid JSON")
    assert_problem(api.post("/api/v1/checks", content=b"", headers=headers), 400, "empty")
    assert_problem(api.post("/api/v1/checks", content=b"\xff\xfe", headers=headers), 400)
    assert_problem(api.post("/api/v1/checks", content=b"kind=delay",
                            headers={"Content-Type": "application/x-www-form-urlencoded"}), 415)
    big = {"kind": "external", "params": {"blob": "x" * 70000}}
    assert_problem(create(api, big), 413)
    assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def test_unknown_ids_and_routes_are_404_problems(api):
    assert_problem(api.get("/api/v1/checks/AAAAAAAAAAAAAAAAAAAAAA"), 404, "no check")
    assert_problem(api.get("/api/v1/checks/not-an-id"), 404)
    assert_problem(api.delete("/api/v1/checks/AAAAAAAAAAAAAAAAAAAAAA"), 404)
    assert_problem(api.get("/api/v1/nothing-here"), 404)


def test_a_callback_secret_is_generated_and_shown_only_at_creation(make_herald):
    api = make_herald("--allow-private-targets").client()
    # An external check is never completed here, so nothing is ever sent to the callback.
    response = create(api, {"kind": "external", "callback_url": "http://127.0.0.1:9/hook"})
    created = response.json()
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]+={0,2}", created["callback_secret"])
    assert created["callback_url"] == "http://127.0.0.1:9/hook"
    assert "callback_secret" not in api.get(f"/api/v1/checks/{created['id']}").json()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "http://[::1]/hook", "http://10.0.0.7/hook",
                                 "http://169.254.169.254/latest/meta-data", "http://localhost/hook",
                                 "http://0x7f000001/hook"])
def test_a_callback_url_to_a_private_address_is_refused_at_creation(api, url):
    """The SSRF guard of subscriptions and http checks: 422 before anything is written."""
    assert_problem(create(api, {"kind": "external", "callback_url": url}), 422, "callback_url")
    assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def test_duplicate_keys_in_a_body_are_refused(api):
    body = b'{"kind": "delay", "kind": "http", "params": {"ms": 1}}'
    response = api.post("/api/v1/checks", content=body, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "kind")
    escaped = b'{"kind": "external", "params": {"a": 1, "\\u0061": 2}}'
    response = api.post("/api/v1/checks", content=escaped, headers={"Content-Type": "application/json"})
    assert_problem(response, 400, "twice")
    assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []


def test_a_stalled_request_body_is_cut_not_held(make_herald):
    import socket
    import time
    herald = make_herald(config={"idle-timeout": 2})
    host, port = herald.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as connection:
        connection.sendall(b"POST /api/v1/checks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{\"kind\":")
        started = time.monotonic()
        while connection.recv(4096):
            pass
        assert time.monotonic() - started < 12
    with herald.client() as api:
        assert api.get("/api/v1/checks", headers=AUTH).json()["checks"] == []
