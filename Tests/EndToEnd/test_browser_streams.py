"""The streaming transports as a browser uses them: EventSource, fetch streaming, WebSocket."""

import threading
import time

from conftest import AUTH
from test_browser_jsonp import browser  # noqa: F401  (the Chromium fixture)
from test_sse import publish


def publish_soon(herald, channel, count, delay=1.0):
    """Publishes from another thread once the page has subscribed."""
    def run():
        time.sleep(delay)
        with herald.client() as api:
            publish(api, channel, count)
    threading.Thread(target=run, daemon=True).start()


def test_eventsource_receives_named_events_in_order(browser, herald):  # noqa: F811
    browser.get(f"{herald.url}/healthz")
    publish_soon(herald, "es", 3)
    received = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const got = [];
        const source = new EventSource('/api/v1/channels/es/events');
        source.addEventListener('t', (message) => {
            got.push({id: message.lastEventId, event: JSON.parse(message.data)});
            if (got.length === 3) { source.close(); done(got); }
        });
        source.onerror = () => {};
    """)
    assert [r["event"]["offset"] for r in received] == [1, 2, 3]
    assert all(r["id"] == f"{r['event']['epoch']}:{r['event']['offset']}" for r in received)


def test_eventsource_stops_after_a_check_ends(browser, herald):  # noqa: F811
    with herald.client() as api:
        # Long enough to be processing when the page connects: a check already done when it
        # connects is streamed as its snapshot alone (`check.done`), which is not under test here.
        check = api.post("/api/v1/checks", json={"kind": "delay", "params": {"ms": 1500}}).json()
    browser.get(f"{herald.url}/healthz")
    result = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const types = [];
        const source = new EventSource(arguments[0]);
        for (const type of ['check.created', 'check.done']) {
            source.addEventListener(type, () => types.push(type));
        }
        // After the terminal event the stream ends; the reconnect gets 204 and EventSource closes.
        const poll = setInterval(() => {
            if (source.readyState === EventSource.CLOSED) { clearInterval(poll); done({types}); }
        }, 50);
    """, f"/api/v1/checks/{check['id']}/events")
    assert result["types"] == ["check.created", "check.done"]


def test_fetch_streaming_reads_ndjson_chunks(browser, herald):  # noqa: F811
    browser.get(f"{herald.url}/healthz")
    publish_soon(herald, "fetch", 3)
    offsets = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        (async () => {
            const response = await fetch('/api/v1/channels/fetch/events?format=ndjson');
            const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
            let buffer = '', offsets = [];
            while (offsets.length < 3) {
                const {value, done: ended} = await reader.read();
                if (ended) break;
                buffer += value;
                let newline;
                while ((newline = buffer.indexOf('\\n')) >= 0) {
                    const line = buffer.slice(0, newline);
                    buffer = buffer.slice(newline + 1);
                    if (line) offsets.push(JSON.parse(line).offset);
                }
            }
            reader.cancel();
            done(offsets);
        })();
    """)
    assert offsets == [1, 2, 3]


def test_a_browser_websocket_subscribes_and_receives(browser, herald):  # noqa: F811
    browser.get(f"{herald.url}/healthz")
    publish_soon(herald, "browser-ws", 2, delay=1.5)
    frames = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const frames = [];
        const socket = new WebSocket(location.origin.replace('http', 'ws') + '/api/v1/ws');
        socket.onopen = () => socket.send(JSON.stringify({op: 'subscribe', channel: 'browser-ws', id: 1}));
        socket.onmessage = (message) => {
            frames.push(JSON.parse(message.data));
            if (frames.filter((f) => f.op === 'event').length === 2) { socket.close(); done(frames); }
        };
    """)
    assert frames[0]["op"] == "subscribed" and frames[0]["id"] == 1
    assert [f["offset"] for f in frames if f["op"] == "event"] == [1, 2]


def test_a_browser_websocket_sees_1012_on_sigterm_and_resumes_after_restart(browser, make_herald):  # noqa: F811
    import signal
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    herald = make_herald("--port", str(port))
    browser.get(f"{herald.url}/healthz")
    publish_soon(herald, "drain", 2)
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        window.events = []; window.closeCode = null;
        const socket = new WebSocket(location.origin.replace('http', 'ws') + '/api/v1/ws');
        socket.onopen = () => socket.send(JSON.stringify({op: 'subscribe', channel: 'drain'}));
        socket.onmessage = (message) => {
            const frame = JSON.parse(message.data);
            if (frame.op === 'event') window.events.push(frame);
            if (window.events.length === 2) done();
        };
        socket.onclose = (close) => { window.closeCode = close.code; };
    """)
    herald.proc.send_signal(signal.SIGTERM)
    assert herald.proc.wait(timeout=30) == 0
    assert browser.execute_script("return window.closeCode") == 1012
    herald.start()
    assert herald.url.endswith(f":{port}")
    publish_soon(herald, "drain", 2, delay=0.5)
    offsets = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const last = window.events[window.events.length - 1];
        const socket = new WebSocket(location.origin.replace('http', 'ws') + '/api/v1/ws');
        socket.onopen = () => socket.send(JSON.stringify(
            {op: 'subscribe', channel: 'drain', since: last.offset, epoch: last.epoch}));
        socket.onmessage = (message) => {
            const frame = JSON.parse(message.data);
            if (frame.op === 'event') window.events.push(frame);
            if (window.events.length === 4) { socket.close(); done(window.events.map((e) => e.offset)); }
        };
    """)
    assert offsets == [1, 2, 3, 4]


def self_signed_certificate(directory):
    import subprocess
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_ten_eventsources_to_one_origin_all_receive_over_http2(browser, make_herald, tmp_path):  # noqa: F811
    cert, key = self_signed_certificate(tmp_path)
    herald = make_herald("--tls-cert", str(cert), "--tls-key", str(key))
    assert herald.url.startswith("https://")
    browser.get(f"{herald.url}/healthz")
    browser.execute_script("""
        window.opened = 0; window.received = {};
        for (let i = 0; i < 10; i++) {
            const source = new EventSource('/api/v1/channels/tls' + i + '/events');
            source.onopen = () => { window.opened += 1; };
            source.addEventListener('t', (message) => { window.received[i] = JSON.parse(message.data).data; });
        }
    """)
    deadline = time.monotonic() + 20
    while browser.execute_script("return window.opened") < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert browser.execute_script("return window.opened") == 10  # over HTTP/1.1 only six would open
    with herald.client(verify=False) as api:
        for i in range(10):
            api.post(f"/api/v1/channels/tls{i}/events", json={"type": "t", "data": i}, headers=AUTH)
    while len(browser.execute_script("return window.received")) < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert browser.execute_script("return window.received") == {str(i): i for i in range(10)}
    protocol = browser.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol")
    assert protocol == "h2"
    # WebSocket from the same page: a wss:// connection to the same port (HTTP/1.1 by ALPN).
    pong = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const socket = new WebSocket(location.origin.replace('https', 'wss') + '/api/v1/ws');
        socket.onopen = () => socket.send(JSON.stringify({op: 'ping', id: 7}));
        socket.onmessage = (message) => { socket.close(); done(JSON.parse(message.data)); };
        socket.onerror = () => done({op: 'error'});
    """)
    assert pong == {"op": "pong", "id": 7}
