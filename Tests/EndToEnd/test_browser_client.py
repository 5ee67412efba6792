"""herald.js in headless Chromium, directly and through real nginx processes playing hostile
proxies: every published event arrives exactly once, in order, whatever the path does."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from conftest import AUTH, wait_for
from test_browser_jsonp import browser  # noqa: F401  (the Chromium fixture)

EVENTS = 50

# What each hostile proxy does to the traffic, as nginx configuration inside `location /`.
WEBSOCKET_PASS = """
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
"""
PROXIES = {
    # A plain, well-behaved reverse proxy (used to count connections).
    "plain": WEBSOCKET_PASS,
    # A corporate proxy that refuses WebSocket upgrades.
    "no_websocket": """
      if ($http_upgrade) { return 403; }
      proxy_http_version 1.1;
      proxy_buffering off;
""",
    # An old proxy: HTTP/1.0 to the upstream, ignores X-Accel-Buffering, and holds what it
    # sends until it has 64 KiB (or the answer is complete), gzipping it too.
    "buffering": """
      proxy_http_version 1.0;
      proxy_buffering on;
      proxy_ignore_headers X-Accel-Buffering;
      postpone_output 65536;
      gzip on;
      gzip_proxied any;
      gzip_types text/event-stream application/x-ndjson text/html application/json application/javascript;
""",
    # Kills every connection every few seconds (the test kills its worker process; nginx starts a new one).
    "cut_all": WEBSOCKET_PASS,
    # Drops a connection that carried nothing from Herald for 3 seconds.
    "cut_idle": WEBSOCKET_PASS + """
      proxy_read_timeout 3s;
      proxy_send_timeout 3s;
""",
}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """A real nginx process in front of Herald, with its own prefix directory."""

    def __init__(self, kind, upstream, directory):
        self.kind = kind
        self.directory = pathlib.Path(directory)
        (self.directory / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(nginx), "install Debian's nginx (scripts/test.sh does)"
        d = self.directory
        config = f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{self.port};
    location / {{
      proxy_pass {upstream};
{PROXIES[kind]}
    }}
  }}
}}
"""
        (d / "nginx.conf").write_text(config)
        self.proc = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self.ready, timeout=10)
        self.cutting = threading.Event()

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("nginx failed: " + self.proc.stderr.read().decode() + self.log())
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self):
        path = self.directory / "error.log"
        return path.read_text() if path.exists() else ""

    def requests(self, path_prefix):
        lines = (self.directory / "access.log").read_text().splitlines()
        return [line for line in lines if f"GET {path_prefix}" in line]

    def workers(self):
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in children.split()]

    def cut_every(self, seconds):
        """Kills the worker (and so every connection through it) every `seconds`."""
        def run():
            while not self.cutting.wait(seconds):
                for pid in self.workers():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        threading.Thread(target=run, daemon=True).start()

    def stop(self):
        self.cutting.set()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def nginx(tmp_path):
    started = []

    def make(kind, upstream):
        proxy = Nginx(kind, upstream, tmp_path / f"nginx-{kind}-{len(started)}")
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


# The page side: herald.js connects, subscribes from the channel's start, and records.
SUBSCRIBE = """
const [channel, options] = arguments;
window.got = []; window.gaps = []; window.errors = []; window.transports = [];
window.h = Herald.connect(location.origin, options || {});
h.on('transport', (t) => transports.push(t));
h.on('gap', (g) => gaps.push(g));
h.on('error', (e) => errors.push(e));
h.subscribe(channel, (e) => got.push({offset: e.offset, type: e.type, n: e.data && e.data.n}), {since: 0});
"""

STATE = "return {got: window.got, transport: h.transport, state: h.state, attempts: h.attempts, " \
        "errors: window.errors, gaps: window.gaps, transports: window.transports, stats: h.stats, leader: h.isLeader}"


def established_to(url):
    """The TCP connections now established to `url`'s port from this machine (the proxy's
    upstream side), read from /proc/net/tcp: a proxied WebSocket holds one for its life."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    count = 0
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01":
            count += 1
    return count


def publish(herald, channel, count, spacing=0.0, start=1):
    with httpx.Client(base_url=herald.url, timeout=30) as client:
        for n in range(start, start + count):
            answer = client.post(f"/api/v1/channels/{channel}/events", json={"type": "tick", "data": {"n": n}},
                                 headers=AUTH)
            assert answer.status_code == 201, answer.text
            if spacing:
                time.sleep(spacing)


def publish_in_background(herald, channel, count, spacing):
    thread = threading.Thread(target=publish, args=(herald, channel, count, spacing), daemon=True)
    thread.start()
    return thread


def received_all(browser, count, timeout):  # noqa: F811
    """Waits for `count` events, then a moment more, so a late duplicate would be seen."""
    wait_for(lambda: len(browser.execute_script("return window.got")) >= count, timeout=timeout, interval=0.2)
    time.sleep(1.5)
    return browser.execute_script(STATE)


def assert_exactly_once_in_order(state, count=EVENTS):
    offsets = [event["offset"] for event in state["got"]]
    assert offsets == list(range(1, count + 1)), state
    assert [event["n"] for event in state["got"]] == list(range(1, count + 1))
    assert state["gaps"] == []


def open_page(browser, origin, channel, options=None):  # noqa: F811
    browser.get(origin + "/lab")
    browser.execute_script(SUBSCRIBE, channel, options or {})
    wait_for(lambda: browser.execute_script("return h.state") == "connected", timeout=30, interval=0.1)


def test_through_a_proxy_that_refuses_websocket_sse_carries_every_event(browser, herald, nginx):  # noqa: F811
    proxy = nginx("no_websocket", herald.url)
    open_page(browser, proxy.url, "refused")
    publish_in_background(herald, "refused", EVENTS, 0.02)
    state = received_all(browser, EVENTS, timeout=60)
    assert_exactly_once_in_order(state)
    assert state["attempts"][0] == "websocket" and state["transport"] == "sse", state
    assert any(" 403 " in line for line in proxy.requests("/api/v1/ws")), "the proxy did refuse the upgrade"


def test_through_a_buffering_http10_proxy_long_polling_carries_every_event(browser, herald, nginx):  # noqa: F811
    proxy = nginx("buffering", herald.url)
    open_page(browser, proxy.url, "buffered")
    publish_in_background(herald, "buffered", EVENTS, 0.02)
    state = received_all(browser, EVENTS, timeout=90)
    assert_exactly_once_in_order(state)
    # The streams were held back by the proxy, so they never showed a message: polling won.
    assert state["transport"] in ("xhr_polling", "jsonp_polling", "polling"), state
    assert {"sse", "xhr_streaming"} <= set(state["attempts"]), state


def test_through_a_proxy_that_kills_every_connection_every_few_seconds(browser, herald, nginx):  # noqa: F811
    proxy = nginx("cut_all", herald.url)
    open_page(browser, proxy.url, "killed")
    proxy.cut_every(2.0)
    publish_in_background(herald, "killed", EVENTS, 0.2)  # ten seconds: several cuts
    state = received_all(browser, EVENTS, timeout=120)
    assert_exactly_once_in_order(state)
    assert len(state["errors"]) >= 2, "the proxy cut the connection several times: " + json.dumps(state)


def test_through_a_proxy_that_cuts_idle_connections(browser, herald, nginx):  # noqa: F811
    proxy = nginx("cut_idle", herald.url)
    open_page(browser, proxy.url, "idle")
    # Bursts with idle pauses longer than the proxy's 3 s timeout in between.
    for burst in range(5):
        time.sleep(4.5)
        publish(herald, "idle", EVENTS // 5, start=burst * (EVENTS // 5) + 1)
    state = received_all(browser, EVENTS, timeout=90)
    assert_exactly_once_in_order(state)
    assert state["errors"], "the proxy cut at least one idle connection"
    # herald.js learned the path's idle limit and now keeps the connection busier than that.
    heartbeat = browser.execute_script("return h.link.heartbeat")
    assert heartbeat < 3, heartbeat


@pytest.mark.parametrize("missing,expected", [
    ("delete window.WebSocket; window.WebSocket = undefined;", "sse"),
    ("window.WebSocket = undefined; window.EventSource = undefined;", "xhr_streaming"),
], ids=["websocket_blocked", "websocket_and_eventsource_missing"])
def test_a_browser_without_websocket_or_eventsource_falls_back(browser, herald, missing, expected):  # noqa: F811
    browser.get(herald.url + "/lab")
    browser.execute_script(missing)
    channel = "without-" + expected
    browser.execute_script(SUBSCRIBE, channel, {})
    wait_for(lambda: browser.execute_script("return h.state") == "connected", timeout=30)
    publish(herald, channel, EVENTS)
    state = received_all(browser, EVENTS, timeout=30)
    assert_exactly_once_in_order(state)
    assert state["transport"] == expected, state


def test_a_websocket_that_opens_but_carries_no_frames_loses_the_race(browser, herald):  # noqa: F811
    browser.get(herald.url + "/lab")
    # What a proxy that accepts the upgrade and then swallows frames looks like to a page.
    browser.execute_script("""
        const Real = window.WebSocket;
        window.WebSocket = class extends Real { send() {} };
        Object.defineProperty(window.WebSocket.prototype, 'onmessage', {set() {}, get() { return null; }});
    """)
    browser.execute_script(SUBSCRIBE, "swallowed", {})
    wait_for(lambda: browser.execute_script("return h.state") == "connected", timeout=30)
    publish(herald, "swallowed", EVENTS)
    state = received_all(browser, EVENTS, timeout=30)
    assert_exactly_once_in_order(state)
    assert state["attempts"][0] == "websocket" and state["transport"] == "sse", state


def test_every_single_transport_delivers_every_event_once(browser, herald):  # noqa: F811
    browser.get(herald.url + "/lab")
    for name in ["websocket", "sse", "xhr_streaming", "iframe", "xhr_polling", "jsonp_polling", "polling"]:
        channel = "only-" + name
        browser.execute_script(SUBSCRIBE, channel, {"transports": [name], "share": False, "pollInterval": 200})
        wait_for(lambda: browser.execute_script("return h.state") == "connected", timeout=30)
        publish(herald, channel, 20)
        state = received_all(browser, 20, timeout=30)
        assert_exactly_once_in_order(state, 20)
        assert state["transport"] == name, state
        browser.execute_script("h.close()")


def test_a_lost_position_is_one_gap_with_the_fresh_snapshot(browser, herald):  # noqa: F811
    publish(herald, "lost", 5)
    browser.get(herald.url + "/lab")
    browser.execute_script("""
        window.got = []; window.gaps = [];
        window.h = Herald.connect(location.origin);
        h.on('gap', (g) => gaps.push(g));
        h.subscribe('lost', (e) => got.push(e.offset), {since: 3, epoch: 'stale000'});
    """)
    wait_for(lambda: browser.execute_script("return window.got.length") >= 5, timeout=30)
    publish(herald, "lost", 2, start=6)
    wait_for(lambda: browser.execute_script("return window.got.length") >= 7, timeout=30)
    time.sleep(1)
    gaps = browser.execute_script("return window.gaps")
    assert len(gaps) == 1 and gaps[0]["channel"] == "lost", gaps
    assert [event["offset"] for event in gaps[0]["events"]] == [1, 2, 3, 4, 5]
    assert browser.execute_script("return window.got") == [1, 2, 3, 4, 5, 6, 7]


def test_a_hole_larger_than_a_page_is_filled_page_by_page_not_reported_as_a_gap(browser, make_herald):  # noqa: F811
    herald = make_herald(config={"poll-max-events": 5})
    publish(herald, "holes", 23)
    with herald.client() as api:
        last = api.get("/api/v1/channels/holes/events", params={"since": 22}).json()["events"][0]
    browser.get(herald.url + "/lab")
    # Plain polling with a long interval: its first answer delivers 1-5, then it stays quiet.
    browser.execute_script("""
        window.got = []; window.gaps = [];
        window.h = Herald.connect(location.origin, {transports: ['polling'], pollInterval: 600000, share: false});
        h.on('gap', (g) => gaps.push(g));
        h.subscribe('holes', (e) => got.push(e.offset), {since: 0});
    """)
    wait_for(lambda: browser.execute_script("return window.got.length") >= 5, timeout=30)
    # Event 23 arrives "live" while 6-22 are missing: four pages of five fill the hole.
    browser.execute_script("h.subscriptions.get('holes').accept(arguments[0])", last)
    wait_for(lambda: browser.execute_script("return window.got.length") >= 23, timeout=30)
    assert browser.execute_script("return window.got") == list(range(1, 24))
    assert browser.execute_script("return window.gaps") == []


def test_create_check_resolves_with_the_done_check_and_the_module_form_works(browser, herald):  # noqa: F811
    browser.get(herald.url + "/lab")
    check = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        import('/herald.mjs').then(({default: Herald, connect}) => {
          if (connect !== Herald.connect) return done({error: 'exports differ'});
          connect().createCheck({kind: 'delay', params: {ms: 300, result: {x: 1}}}).then(done, (e) => done({error: String(e)}));
        });
    """)
    assert check["state"] == "done" and check["result"] == {"x": 1}, check
    with httpx.Client(base_url=herald.url) as client:
        types = client.get("/herald.d.ts")
        assert types.status_code == 200 and "export function connect" in types.text


def chromium_with_profile(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--user-data-dir={profile}"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(40)
    return driver


def test_the_winner_is_remembered_across_visits_with_the_same_profile(herald, nginx, tmp_path):
    proxy = nginx("no_websocket", herald.url)
    profile = tmp_path / "profile"
    for visit in range(2):
        driver = chromium_with_profile(profile)
        try:
            open_page(driver, proxy.url, "visits")
            state = driver.execute_script(STATE)
            assert state["transport"] == "sse", state
            cached = json.loads(driver.execute_script(f"return localStorage.getItem('herald.transport:{proxy.url}')"))
            assert cached["transport"] == "sse"
            if visit == 1:
                # The second visit starts with what worked, not with a WebSocket that will fail.
                assert state["attempts"][0] == "sse", state
        finally:
            driver.quit()


def test_a_remembered_fallback_is_upgraded_when_websocket_works(browser, herald):  # noqa: F811
    browser.get(herald.url + "/lab")
    browser.execute_script("localStorage.setItem('herald.transport:' + location.origin,"
                           " JSON.stringify({transport: 'xhr_polling', at: Date.now()}))")
    browser.execute_script(SUBSCRIBE, "upgrade", {"upgradeDelay": 500})
    wait_for(lambda: browser.execute_script("return window.transports").count("websocket") == 1, timeout=30)
    publish(herald, "upgrade", EVENTS, 0.01)
    state = received_all(browser, EVENTS, timeout=30)
    assert_exactly_once_in_order(state)
    assert state["attempts"][0] == "xhr_polling" and state["transports"] == ["xhr_polling", "websocket"], state


def test_two_tabs_share_one_connection(browser, herald, nginx):  # noqa: F811
    proxy = nginx("plain", herald.url)
    open_page(browser, proxy.url, "tabs")
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    open_page(browser, proxy.url, "tabs")
    second = browser.current_window_handle
    publish(herald, "tabs", EVENTS)
    states = {}
    for handle in (first, second):
        browser.switch_to.window(handle)
        states[handle] = received_all(browser, EVENTS, timeout=30)
        assert_exactly_once_in_order(states[handle])
    assert states[first]["leader"] and not states[second]["leader"]
    assert states[second]["stats"]["requests"] == 0 and states[second]["transport"] == "websocket"
    assert established_to(herald.url) == 1, "one connection (the leader's WebSocket) for both tabs"
    # The leader's tab closes; the other takes over the connection and goes on from where it was.
    browser.switch_to.window(first)
    browser.close()
    browser.switch_to.window(second)
    wait_for(lambda: browser.execute_script("return h.isLeader && h.state === 'connected'"), timeout=30)
    publish(herald, "tabs", 10, start=EVENTS + 1)
    state = received_all(browser, EVENTS + 10, timeout=30)
    assert_exactly_once_in_order(state, EVENTS + 10)


def test_the_lab_completes_with_every_lane_green(browser, herald):  # noqa: F811
    browser.set_window_size(1200, 900)
    browser.get(herald.url + "/lab?run=1&ms=1500")
    wait_for(lambda: browser.execute_script("return document.body.dataset.done === '1'"), timeout=60)
    results = browser.execute_script("return window.__results")
    lanes = results["lanes"]
    assert set(lanes) == {"polling", "xhr_polling", "jsonp_polling", "xhr_streaming", "sse", "iframe", "websocket",
                          "grpc_web", "mixed"}
    for name, lane in lanes.items():
        assert lane["state"] == "ok", (name, lane)
        assert [e["type"] for e in lane["events"]] == ["check.created", "check.done"], (name, lane)
        assert lane["requests"] >= 1 and lane["bytes"] > 0, (name, lane)
    assert lanes["mixed"]["transport"] == "websocket"
    if os.environ.get("HERALD_LAB_SCREENSHOT"):
        browser.save_screenshot(os.environ["HERALD_LAB_SCREENSHOT"])


def test_breaking_websocket_in_the_lab_falls_back_and_the_mixed_lane_still_completes(browser, herald):  # noqa: F811
    browser.get(herald.url + "/lab?run=1&ms=4000")
    wait_for(lambda: browser.execute_script("return (window.__results.lanes.mixed || {}).transport") == "websocket",
             timeout=30)
    browser.find_element("css selector", "button[data-break=websocket]").click()
    wait_for(lambda: browser.execute_script("return document.body.dataset.done === '1'"), timeout=60)
    mixed = browser.execute_script("return window.__results.lanes.mixed")
    assert mixed["state"] == "ok" and mixed["transport"] != "websocket", mixed
    assert [e["type"] for e in mixed["events"]] == ["check.created", "check.done"]
