"""A page served from another origin uses herald.js with a client token, as the README's
`<script src=".../herald.js">` example tells a new user to: CORS lets `createCheck` through,
and with WebSocket blocked a private channel streams (SSE or XHR streaming, not polling) with
no gap and no duplicate. A page from an origin not in `allowed-origins` gets neither CORS nor
a WebSocket. Real Chromium, real pages on their own local web servers."""

import time

import jwt
import pytest

from conftest import AUTH, wait_for
from test_browser_client import publish
from test_browser_jsonp import browser, page_server  # noqa: F401  (the Chromium fixture)

SECRET = "cross-origin-secret-of-at-least-32-bytes"
EVENTS = 30


@pytest.fixture
def origins():
    servers = [page_server(), page_server()]
    yield [origin for _, origin in servers]
    for server, _ in servers:
        server.shutdown()


def token(**claims):
    body = {"exp": int(time.time()) + 120, "sub": "page", "channels": ["private:*"], "checks": True, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256")


LOAD = """
const [url, token, blockWebSocket, done] = [arguments[0], arguments[1], arguments[2], arguments[arguments.length - 1]];
if (blockWebSocket) { delete window.WebSocket; window.WebSocket = undefined; }
window.got = []; window.errors = []; window.transport = null;
const script = document.createElement('script');
script.src = url + '/herald.js';
script.onload = () => {
  window.h = Herald.connect(url, {token: token});
  h.on('transport', (name) => { window.transport = name; });
  h.on('error', (e) => window.errors.push(e));
  done(true);
};
script.onerror = () => done(false);
document.head.appendChild(script);
"""


def test_a_page_on_another_origin_uses_herald_with_a_token(browser, make_herald, origins):  # noqa: F811
    page_origin = origins[0]
    herald = make_herald(config={"token-secret": SECRET, "create-checks": "token",
                                 "allowed-origins": page_origin})
    browser.get(page_origin + "/")
    assert browser.execute_async_script(LOAD, herald.url, token(), True)
    created = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        h.createCheck({kind: 'delay', params: {ms: 200, result: {ok: 1}}})
          .then((check) => done({state: check.state, result: check.result}), (e) => done({error: String(e)}));
    """)
    assert created == {"state": "done", "result": {"ok": 1}}, created
    browser.execute_script("h.subscribe('private:feed', (e) => window.got.push(e.offset), {since: 0});")
    wait_for(lambda: browser.execute_script("return window.transport"), timeout=30, interval=0.1)
    publish(herald, "private:feed", EVENTS, spacing=0.01)
    wait_for(lambda: len(browser.execute_script("return window.got")) >= EVENTS, timeout=30, interval=0.2)
    time.sleep(1)  # a late duplicate would show
    assert browser.execute_script("return window.got") == list(range(1, EVENTS + 1))
    assert browser.execute_script("return window.transport") in ("sse", "xhr_streaming")
    assert browser.execute_script("return window.errors") == []


def test_a_page_from_an_origin_not_allowed_gets_neither_cors_nor_a_websocket(browser, make_herald, origins):  # noqa: F811
    allowed, other = origins
    herald = make_herald(config={"token-secret": SECRET, "allowed-origins": allowed})
    browser.get(other + "/")
    outcome = browser.execute_async_script("""
        const [url, token, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
        const result = {};
        fetch(url + '/api/v1/checks', {method: 'POST', headers: {'Content-Type': 'application/json',
              'Authorization': 'Bearer ' + token}, body: JSON.stringify({kind: 'delay', params: {ms: 1}})})
          .then(() => { result.fetch = 'allowed'; }, () => { result.fetch = 'blocked'; })
          .then(() => new Promise((resolve) => {
            const ws = new WebSocket(url.replace('http', 'ws') + '/api/v1/ws?access_token=' + token);
            ws.onopen = () => { result.ws = 'open'; ws.close(); resolve(); };
            ws.onerror = () => { result.ws = 'refused'; resolve(); };
          }))
          .then(() => done(result));
    """, herald.url, token())
    assert outcome == {"fetch": "blocked", "ws": "refused"}, outcome
    # The same requests from the allowed origin go through.
    browser.get(allowed + "/")
    outcome = browser.execute_async_script("""
        const [url, token, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
        fetch(url + '/api/v1/channels/private:x/events?since=0', {headers: {'Authorization': 'Bearer ' + token}})
          .then((r) => done({status: r.status, etag: r.headers.get('Content-Type')}), (e) => done({error: String(e)}));
    """, herald.url, token())
    assert outcome["status"] == 200, outcome
    with __import__("httpx").Client(base_url=herald.url) as api:
        assert api.get("/healthz", headers={**AUTH, "Origin": other}).headers.get("access-control-allow-origin") is None
