"""XHR streaming (NDJSON) with httpx, and forever-iframe streaming in headless Chromium."""

import json
import threading
import time

import httpx

from conftest import AUTH, assert_problem, create
from test_browser_jsonp import browser  # noqa: F401  (the Chromium fixture)
from test_sse import publish


def ndjson_lines(herald, path, params=None, headers=None, count=None, timeout=30):
    """Reads a chunked NDJSON stream; returns (events, saw_blank_heartbeat)."""
    events, blank = [], False
    with httpx.Client(base_url=herald.url, timeout=timeout) as client:
        with client.stream("GET", path, params=params, headers=headers or {}) as response:
            assert response.headers["content-type"] == "application/x-ndjson"
            assert response.headers.get("transfer-encoding") == "chunked"
            for line in response.iter_lines():
                if line == "":
                    blank = True
                else:
                    events.append(json.loads(line))
                if count is not None and (len(events) >= count or (count == 0 and blank)):
                    break
    return events, blank


def test_ndjson_streams_a_check_from_snapshot_to_end(herald, api):
    check = create(api, {"kind": "delay", "params": {"ms": 400}}).json()
    events, _ = ndjson_lines(herald, f"/api/v1/checks/{check['id']}/events",
                             headers={"Accept": "application/x-ndjson"})
    assert [e["type"] for e in events] == ["check.created", "check.done"]
    assert events[-1]["data"]["state"] == "done"


def test_ndjson_resumes_from_since_and_carries_live_events(herald, api):
    publish(api, "nd", 4)
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("events", ndjson_lines(
        herald, "/api/v1/channels/nd/events", params={"format": "ndjson", "since": 2}, count=5)[0]), daemon=True)
    reader.start()
    time.sleep(0.5)
    publish(api, "nd", 3, start=4)
    reader.join(30)
    assert [e["offset"] for e in result["events"]] == [3, 4, 5, 6, 7]


def test_ndjson_heartbeats_are_blank_lines(make_herald):
    herald = make_herald("--heartbeat", "1")
    _, blank = ndjson_lines(herald, "/api/v1/channels/idle/events", params={"format": "ndjson"}, count=0)
    assert blank


def test_ndjson_announces_a_lost_position(make_herald):
    herald = make_herald(config={"history-max-events": 2})
    with herald.client() as api:
        publish(api, "lossy", 5)
    events, _ = ndjson_lines(herald, "/api/v1/channels/lossy/events", params={"format": "ndjson", "since": 0},
                             count=3)
    assert events[0]["type"] == "herald.reset" and events[0]["recovered"] is False
    assert [e["offset"] for e in events[1:]] == [4, 5]


def test_a_forever_iframe_delivers_events_to_its_parent_page(browser, herald):  # noqa: F811
    with herald.client() as api:
        publish(api, "frame", 2)
        browser.get(f"{herald.url}/healthz")  # the parent page must share Herald's origin
        browser.execute_script("""
            window.received = [];
            window.heraldEvent = (event) => window.received.push(event);
            const frame = document.createElement('iframe');
            frame.src = '/api/v1/channels/frame/events?format=html&since=0';
            document.body.appendChild(frame);
        """)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and browser.execute_script("return window.received.length") < 2:
            time.sleep(0.1)
        api.post("/api/v1/channels/frame/events", json={"type": "t", "data": {"html": "</script><b>x</b>"}},
                 headers=AUTH)
        while time.monotonic() < deadline and browser.execute_script("return window.received.length") < 3:
            time.sleep(0.1)
        received = browser.execute_script("return window.received")
    assert [e["offset"] for e in received] == [1, 2, 3]
    assert received[2]["data"] == {"html": "</script><b>x</b>"}


def test_a_stream_opened_with_welcome_announces_itself_and_shows_its_heartbeats(api, herald):
    with api.stream("GET", "/api/v1/channels/welcomed/events?format=ndjson&welcome=1&heartbeat=1") as stream:
        lines = stream.iter_lines()
        welcome = json.loads(next(lines))
        assert welcome == {"type": "herald.welcome", "channel": "welcomed", "epoch": "", "recovered": True, "next": 0}
        assert json.loads(next(lines)) == {"type": "herald.heartbeat", "channel": "welcomed"}
    # In SSE every message is a plain `message` (no event: line), so EventSource.onmessage sees them all.
    api.post("/api/v1/channels/welcomed/events", json={"type": "t", "data": 1}, headers=AUTH)
    with api.stream("GET", "/api/v1/channels/welcomed/events?format=sse&welcome=1&since=0") as stream:
        text = ""
        for chunk in stream.iter_text():
            text += chunk
            if text.count("\n\n") >= 3:
                break
    retry, welcome, event = text.split("\n\n")[:3]
    assert retry == "retry: 2000"
    assert welcome.startswith('data: {"type":"herald.welcome"') and "event:" not in welcome
    epoch = json.loads(welcome[len("data: "):])["epoch"]
    assert event.startswith(f"id: {epoch}:1\ndata: ") and '"type":"t"' in event


def test_an_iframe_stream_names_its_tag_and_bad_stream_options_are_refused(api):
    api.post("/api/v1/channels/tagged/events", json={"type": "t", "data": 1}, headers=AUTH)
    with api.stream("GET", "/api/v1/channels/tagged/events?format=html&since=0&tag=frame-7") as stream:
        text = ""
        for chunk in stream.iter_text():
            text += chunk
            if "</script>" in text:
                break
    assert ',"frame-7");</script>' in text
    for query in ["heartbeat=0", "heartbeat=soon", "tag=%22%29%3Balert(1)%3B"]:
        answer = api.get(f"/api/v1/channels/tagged/events?format=html&{query}")
        assert_problem(answer, 422)
