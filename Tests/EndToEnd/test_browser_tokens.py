"""herald.js with client tokens in headless Chromium: private channels over every transport
across several token expiries (exactly once, in order), refusals that stop a channel without
looping, publishing and cancelling from a page, and reconnects that honour Retry-After.

Tokens are HS256 JWTs minted here with PyJWT, as an application server would, and handed to
the page by a tiny token endpoint its `getToken` calls. The page runs the repository's herald.js (injected,
so the test does not depend on the copy a build bundled)."""

import http.server
import json
import threading
import time
import urllib.parse

import jwt
import pytest

from conftest import AUTH, ROOT, wait_for
from test_browser_client import STATE, assert_exactly_once_in_order, free_port, publish, publish_in_background
from test_browser_jsonp import browser  # noqa: F401  (the Chromium fixture)

SECRET = "e2e-token-secret-0123456789abcdef0123"  # HS256 wants 32 bytes or more
HERALD_JS = (ROOT / "Sources" / "HeraldServer" / "Public" / "herald.js").read_text()
TRANSPORTS = ["websocket", "sse", "xhr_streaming", "iframe", "xhr_polling", "jsonp_polling"]


def mint(claims, secret=SECRET):
    return jwt.encode(claims, secret, algorithm="HS256")


class TokenEndpoint:
    """The application's token endpoint: `GET /token` answers `{"token": <JWT>}` for `claims`,
    valid `ttl` seconds. `stale`: the same token again until it has expired, so the page meets
    real expiries (streams ending with herald.expired, the WebSocket's `expired` op)."""

    def __init__(self, claims, ttl, stale=False, secret=SECRET):
        self.claims, self.ttl, self.stale, self.secret = claims, ttl, stale, secret
        self.issued = []
        self.current = None
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = json.dumps({"token": endpoint.token()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self):
        now = time.time()
        if not (self.stale and self.current and self.current[1] > now):
            exp = int(now + self.ttl)
            self.current = (mint(dict(self.claims, exp=exp), self.secret), exp)
            self.issued.append(exp)
        return self.current[0]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tokens():
    started = []

    def make(claims, ttl=4, stale=False, secret=SECRET):
        endpoint = TokenEndpoint(claims, ttl, stale, secret)
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        endpoint.stop()


@pytest.fixture
def private(make_herald):
    """Herald with client tokens on (channels private by default) and no leeway on exp, so a
    token's expiry is when it says."""
    return make_herald(config={"token-secret": SECRET, "token-leeway": 0, "create-checks": "token"})


# The page side: herald.js with getToken asking the token endpoint; records events and errors.
OPEN = """
const [tokenURL, options, before] = arguments;
if (before) eval(before);
window.got = []; window.gaps = []; window.errors = []; window.transports = [];
const getToken = () => fetch(tokenURL).then((r) => r.json()).then((b) => b.token);
window.h = Herald.connect(location.origin, Object.assign({getToken: tokenURL ? getToken : undefined, share: false}, options));
h.on('transport', (t) => transports.push(t));
h.on('gap', (g) => gaps.push(g));
h.on('error', (e) => errors.push(e));
window.follow = (channel) => h.subscribe(channel, (e) => got.push({channel: e.channel, offset: e.offset, type: e.type,
                                                                   n: e.data && e.data.n}), {since: 0});
"""


def open_page(browser, herald, token_url, options=None, before=None):  # noqa: F811
    browser.get(herald.url + "/lab")
    browser.execute_script(HERALD_JS)  # the repository's herald.js, whatever the binary bundled
    browser.execute_script(OPEN, token_url, options or {}, before)


def connected(browser, timeout=30):  # noqa: F811
    wait_for(lambda: browser.execute_script("return h.state") == "connected", timeout=timeout, interval=0.1)


def received(browser, count, timeout):  # noqa: F811
    """Waits for `count` events, then a moment more, so a late duplicate would be seen."""
    wait_for(lambda: len(browser.execute_script("return window.got")) >= count, timeout=timeout, interval=0.2)
    time.sleep(1.0)
    return browser.execute_script(STATE)


WITHOUT_WEBSOCKET = "delete window.WebSocket; window.WebSocket = undefined;"
# Notes the op of every WebSocket frame the page receives.
WEBSOCKET_OPS = """
window.wsOps = [];
const Real = window.WebSocket;
window.WebSocket = class extends Real {
  constructor(url) { super(url); this.addEventListener('message', (m) => wsOps.push(JSON.parse(m.data).op)); }
};
"""


# Renewal ahead of expiry over every transport; expiry under a live connection over one
# transport of each kind (the WebSocket op, a stream's herald.expired, a poll's 401), which
# keeps the file's run time down.
EXPIRY_CASES = [(transport, False) for transport in TRANSPORTS] + [
    (transport, True) for transport in ("websocket", "sse", "xhr_polling")]


@pytest.mark.parametrize("transport,stale", EXPIRY_CASES,
                         ids=[f"{'expired_under_it' if stale else 'renewed_ahead'}-{t}" for t, stale in EXPIRY_CASES])
def test_a_private_channel_carries_every_event_once_across_token_expiries(browser, private, tokens, transport,  # noqa: F811
                                                                          stale):
    """Tokens of 3 s, events for 10 s: renewed before expiry (fresh tokens), or only once the
    server said they expired (`herald.expired` on streams, `expired` on the WebSocket, 401 on
    polls), every event arrives once, in order, and the transport stays the same."""
    endpoint = tokens({"sub": "u1", "channels": ["orders:*"]}, ttl=3, stale=stale)
    open_page(browser, private, endpoint.url, {"transports": [transport], "pollInterval": 200}, WEBSOCKET_OPS)
    browser.execute_script("follow('orders:7')")
    connected(browser)
    count = 40
    publish_in_background(private, "orders:7", count, 0.25)
    state = received(browser, count, timeout=40)
    assert_exactly_once_in_order(state, count)
    assert state["transports"] == [transport], state
    assert not [e for e in state["errors"] if e.get("permanent")], state
    # At least three tokens: the token lived 3 s, the events 10 s.
    assert len(endpoint.issued) >= 3, endpoint.issued
    if transport == "websocket":
        ops = browser.execute_script("return wsOps")
        assert state["stats"]["requests"] == 1, "one socket throughout: " + json.dumps(state)
        assert ops.count("authed") >= 3, ops
        # Renewed ahead, the socket took each token before the last expired; else the server
        # stopped the subscription (`expired`) and herald.js resubscribed with a fresh token.
        assert ("expired" in ops) == stale, ops
    elif transport in ("sse", "xhr_streaming", "iframe"):
        # A stream's token is in its URL: it ends at the token's expiry and is reopened.
        assert state["stats"]["requests"] >= 3, state


def test_with_websocket_blocked_sse_carries_a_private_channel_across_expiries(browser, private, tokens):  # noqa: F811
    endpoint = tokens({"channels": ["orders:*"]}, ttl=3, stale=True)
    open_page(browser, private, endpoint.url, {}, WITHOUT_WEBSOCKET)
    browser.execute_script("follow('orders:8')")
    connected(browser)
    publish_in_background(private, "orders:8", 40, 0.25)
    state = received(browser, 40, timeout=40)
    assert_exactly_once_in_order(state, 40)
    assert state["transport"] == "sse" and state["transports"] == ["sse"], state
    assert len(endpoint.issued) >= 3, endpoint.issued


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling"])
def test_a_page_clock_far_ahead_neither_spins_nor_loses_events(browser, private, tokens, transport):  # noqa: F811
    """The page's clock runs 10 minutes ahead: every token looks expired on arrival. herald.js
    then leaves expiry to the server's word (and renews then), without calling getToken in a loop."""
    endpoint = tokens({"channels": ["orders:*"]}, ttl=3)
    ahead = "const realNow = Date.now; Date.now = () => realNow() + 600000;"
    open_page(browser, private, endpoint.url, {"transports": [transport], "pollInterval": 200}, ahead)
    browser.execute_script("follow('orders:9')")
    connected(browser)
    publish_in_background(private, "orders:9", 40, 0.25)
    state = received(browser, 40, timeout=40)
    assert_exactly_once_in_order(state, 40)
    assert state["transports"] == [transport], state
    # About one token per 3 s of real time, not one per request or per millisecond.
    assert 3 <= len(endpoint.issued) <= 12, endpoint.issued


# A refusal over every transport; its three causes over one transport of each kind.
REFUSAL_CASES = [(transport, "another_channel") for transport in TRANSPORTS] + [
    (transport, case) for case in ("no_token", "bad_signature") for transport in ("websocket", "sse", "xhr_polling")]


@pytest.mark.parametrize("transport,case", REFUSAL_CASES, ids=[f"{c}-{t}" for t, c in REFUSAL_CASES])
def test_a_refused_channel_is_one_error_and_no_loop(browser, private, tokens, transport, case):  # noqa: F811
    """A token for another channel (403 channel-forbidden), none (401 token-required), or one
    signed with another secret (401 token-invalid): one permanent error for that channel, no
    retries, and a channel the token does grant goes on meanwhile."""
    claims = {"channels": ["allowed", "other:*"]}
    endpoint = None if case == "no_token" else tokens(claims, ttl=60, secret=SECRET if case != "bad_signature" else "x" * 40)
    expected = {"another_channel": "channel-forbidden", "no_token": "token-required", "bad_signature": "token-invalid"}[case]
    open_page(browser, private, endpoint and endpoint.url, {"transports": [transport]})
    browser.execute_script("follow('secret')")
    wait_for(lambda: browser.execute_script("return errors.some((e) => e.permanent)"), timeout=20, interval=0.1)
    requests = browser.execute_script("return h.stats.requests")
    time.sleep(3)
    state = browser.execute_script(STATE)
    refusals = [e for e in state["errors"] if e.get("permanent")]
    assert len(refusals) == 1 and refusals[0]["channel"] == "secret" and refusals[0]["code"] == expected, state
    assert state["stats"]["requests"] == requests, "no retry of a refused channel: " + json.dumps(state)
    assert state["got"] == []
    if case == "another_channel":
        # The same connection still carries what the token grants.
        browser.execute_script("follow('allowed')")
        publish(private, "allowed", 3)
        state = received(browser, 3, timeout=20)
        assert [(e["channel"], e["offset"]) for e in state["got"]] == [("allowed", 1), ("allowed", 2), ("allowed", 3)]


PUBLISH = """
const [channel, type, data, done] = arguments;
h.publish(channel, type, data).then(done, (e) => done({error: e.code || String(e), status: e.status}));
"""


@pytest.mark.parametrize("over", ["websocket", "http"])
def test_a_page_publishes_with_a_publish_grant(browser, private, tokens, over):  # noqa: F811
    """Over the open WebSocket (`publish` op) or, without one, POST: the event reaches another
    subscriber; a channel outside the grant is refused."""
    endpoint = tokens({"channels": ["room:*"], "publish": ["room:*"]}, ttl=30)
    open_page(browser, private, endpoint.url, {"transports": ["websocket" if over == "websocket" else "sse"]})
    browser.execute_script("follow('room:1')")
    connected(browser)
    with private.client() as api:
        with api.stream("GET", "/api/v1/channels/room:1/events", params={"format": "ndjson", "since": 0},
                        headers=AUTH) as stream:
            answer = browser.execute_async_script(PUBLISH, "room:1", "said", {"n": 1})
            assert answer["channel"] == "room:1" and answer["offset"] == 1 and answer["epoch"], answer
            line = next(line for line in stream.iter_lines() if line.strip())
            assert json.loads(line)["data"] == {"n": 1} and json.loads(line)["type"] == "said"
    state = received(browser, 1, timeout=20)
    assert [(e["offset"], e["n"]) for e in state["got"]] == [(1, 1)]
    refused = browser.execute_async_script(PUBLISH, "lobby", "said", {"n": 2})
    assert refused["error"] == "channel-forbidden", refused
    if over == "http":
        assert refused["status"] == 403


@pytest.mark.parametrize("over", ["websocket", "http"])
def test_publishing_over_the_rate_limit_rejects_with_retry_after(browser, make_herald, tokens, over):  # noqa: F811
    herald = make_herald(config={"token-secret": SECRET, "rate-limit-publishes": 1})
    endpoint = tokens({"sub": "chatty", "channels": ["room:*"], "publish": ["room:*"]}, ttl=60)
    open_page(browser, herald, endpoint.url, {"transports": ["websocket" if over == "websocket" else "sse"]})
    browser.execute_script("follow('room:2')")
    connected(browser)
    answers = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const all = [];
        for (let n = 1; n <= 6; n++) {
          all.push(h.publish('room:2', 'said', {n}).then((p) => ({offset: p.offset}),
                                                       (e) => ({code: e.code, retryAfter: e.retryAfter, status: e.status})));
        }
        Promise.all(all).then(done);
    """)
    published = [a for a in answers if "offset" in a]
    limited = [a for a in answers if a.get("code") == "rate-limited"]
    assert published and limited and len(published) + len(limited) == 6, answers
    assert all(isinstance(a["retryAfter"], (int, float)) for a in limited), answers
    if over == "http":
        assert all(a["status"] == 429 for a in limited), answers


def test_websocket_ops_over_the_rate_limit_are_sent_again(browser, make_herald, tokens):  # noqa: F811
    """Over `rate-limit-ws-ops` the server answers `rate_limited` and carries nothing out:
    herald.js sends the subscribes again, and every channel gets every event."""
    herald = make_herald(config={"token-secret": SECRET, "rate-limit-ws-ops": 2})
    endpoint = tokens({"sub": "many", "channels": ["feed:*"]}, ttl=60)
    open_page(browser, herald, endpoint.url, {"transports": ["websocket"]})
    for n in range(8):
        browser.execute_script(f"follow('feed:{n}')")
    connected(browser)
    for n in range(8):
        publish(herald, f"feed:{n}", 3)
    state = received(browser, 24, timeout=30)
    by_channel = {}
    for event in state["got"]:
        by_channel.setdefault(event["channel"], []).append(event["offset"])
    assert by_channel == {f"feed:{n}": [1, 2, 3] for n in range(8)}, state
    assert any(e.get("code") == "rate_limited" for e in state["errors"]), "the limit was hit: " + json.dumps(state)
    assert not [e for e in state["errors"] if e.get("permanent")], state


def test_a_static_token_option_and_create_and_cancel_check(browser, private, tokens):  # noqa: F811
    """`token` without getToken; createCheck (create-checks: token) hands the cancel token to
    onCreated and resolves with it; cancelCheck sends it."""
    token = mint({"channels": ["check-watchers"], "checks": True, "exp": int(time.time()) + 60})
    browser.get(private.url + "/lab")
    browser.execute_script(HERALD_JS)
    check = browser.execute_async_script("""
        const [token, done] = arguments;
        const h = Herald.connect(location.origin, {token: token, share: false});
        let created = null;
        h.createCheck({kind: 'delay', params: {ms: 60000}}, {
          onCreated: (check) => { created = check; h.cancelCheck(check.id, check.cancel_token).catch((e) => done({error: String(e)})); },
        }).then((ended) => done({ended: ended, created: created}), (e) => done({error: e.code || String(e)}));
    """, token)
    assert "error" not in check, check
    assert check["created"]["cancel_token"].startswith("hct_"), check
    assert check["ended"]["state"] == "canceled" and check["ended"]["cancel_token"] == check["created"]["cancel_token"]
    # Without the token, creating is refused (create-checks: token).
    refused = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        Herald.connect(location.origin, {share: false}).createCheck({kind: 'delay', params: {ms: 1}})
          .then((c) => done({check: c}), (e) => done({code: e.code, status: e.status}));
    """)
    assert refused == {"code": "token-required", "status": 401}, refused


class Refusing:
    """A stand-in for an overloaded Herald: serves the page and herald.js, answers every API
    request with `status` and `Retry-After: 2`, and notes when each came."""

    def __init__(self, status):
        self.times = []
        refusing = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                path = urllib.parse.urlsplit(self.path).path
                if path == "/":
                    return self.answer(200, "text/html", b"<!doctype html><html><body><script src='/herald.js'></script>")
                if path == "/herald.js":
                    return self.answer(200, "text/javascript", HERALD_JS.encode())
                if not path.startswith("/api/"):
                    return self.answer(404, "text/plain", b"")  # /favicon.ico
                refusing.times.append(time.monotonic())
                problem = {"type": "urn:herald:problem:x", "title": "busy", "status": status, "detail": "busy",
                           "code": "rate-limited" if status == 429 else "unavailable"}
                self.answer(status, "application/problem+json", json.dumps(problem).encode(), {"Retry-After": "2"})

            def answer(self, code, kind, body, headers=None):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("transport", ["xhr_polling", "sse"])
def test_reconnects_wait_for_retry_after(browser, status, transport):  # noqa: F811
    """A 429 or 503 with Retry-After: 2: no new attempt within 2 s (the backoff alone would
    retry after 125-250 ms). EventSource cannot see the status; herald.js asks with XHR."""
    server = Refusing(status)
    try:
        browser.get(server.url + "/")
        browser.execute_script("""
            window.errors = [];
            window.h = Herald.connect(location.origin, {transports: [arguments[0]], share: false});
            h.on('error', (e) => errors.push(e));
            h.subscribe('busy', () => {});
        """, transport)
        # Each attempt is one request (xhr_polling) or two (the EventSource and its probe).
        per_attempt = 1 if transport == "xhr_polling" else 2
        wait_for(lambda: len(server.times) >= 4 * per_attempt, timeout=25, interval=0.2)
        starts = server.times[::per_attempt]
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        assert all(gap >= 1.9 for gap in gaps), gaps
        if transport == "sse":
            assert all(b - a < 1 for a, b in zip(server.times[::2], server.times[1::2])), server.times
    finally:
        server.stop()
