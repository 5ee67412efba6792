"""herald.js in headless Chromium through nginx balancing round-robin over three nodes of a cluster,
with the nginx configuration docs/cluster.md gives (read from the page, so the page stays true) and
WebSocket upgrades refused: each stream and poll may land on another node, and a node dies mid-run.
Every event arrives exactly once, in order."""

import os
import pathlib
import re
import shutil
import subprocess
import threading

import httpx
import pytest

from conftest import AUTH, ROOT, wait_for
from test_browser_client import free_port, received_all
from test_browser_jsonp import browser  # noqa: F401  (the Chromium fixture)
from test_cluster import cluster, store_url  # noqa: F401  (the cluster fixtures)

EVENTS = 60


def documented_nginx_config():
    """The ```nginx block of docs/cluster.md."""
    page = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```nginx\n(.*?)```", page, re.S)
    assert len(blocks) == 1, "docs/cluster.md shows one nginx configuration"
    return blocks[0]


class Balancer:
    """A real nginx running the documented configuration in front of `nodes`, WebSocket refused."""

    def __init__(self, nodes, directory):
        d = self.directory = pathlib.Path(directory)
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        site = documented_nginx_config()
        servers = "".join(f"    server {node.url.removeprefix('http://')};\n" for node in nodes)
        site, count = re.subn(r"(upstream herald \{\n)(?:\s*server [^;]+;\n)+", lambda m: m.group(1) + servers, site)
        assert count == 1, site
        site, count = re.subn(r"listen 80;", f"listen 127.0.0.1:{self.port};", site)
        assert count == 1, site
        # A corporate proxy in front refuses upgrades: herald.js must do without WebSocket.
        site, count = re.subn(r"(location / \{\n)", r"\1        if ($http_upgrade) { return 403; }\n", site)
        assert count == 1, site
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(nginx), "install Debian's nginx (scripts/test.sh does)"
        (d / "nginx.conf").write_text(f"""
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
  log_format upstream '$request_method $uri $status $upstream_addr';
  access_log {d}/access.log upstream;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
{site}
}}
""")
        self.proc = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-e", str(d / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self.ready, timeout=10)

    def ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError("nginx failed: " + self.proc.stderr.read().decode())
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def upstreams(self, method, path_prefix):
        """The nodes that answered `method` requests under `path_prefix` with a success."""
        answered = set()
        for line in (self.directory / "access.log").read_text().splitlines():
            verb, path, status, tried = line.split(" ", 3)
            if verb == method and path.startswith(path_prefix) and status.startswith("2"):
                answered.add(tried.split(", ")[-1])
        return answered

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def balancer(tmp_path):
    started = []

    def make(nodes):
        started.append(Balancer(nodes, tmp_path / f"nginx{len(started)}"))
        return started[-1]

    yield make
    for proxy in started:
        proxy.stop()


SUBSCRIBE = """
const [channel, options] = arguments;
window.got = []; window.gaps = []; window.errors = []; window.transports = [];
window.h = Herald.connect(location.origin, options);
h.on('transport', (t) => transports.push(t));
h.on('gap', (g) => gaps.push(g));
h.on('error', (e) => errors.push(String(e && e.message || e)));
h.subscribe(channel, (e) => got.push({offset: e.offset, n: e.data && e.data.n}), {since: 0});
"""


def publish_through(proxy, channel, first, last, spacing, after=None):
    """Publishes n = first..last through the balancer (so on every node in turn); calls `after(n)`."""
    with httpx.Client(base_url=proxy.url, timeout=30) as client:
        for n in range(first, last + 1):
            answer = client.post(f"/api/v1/channels/{channel}/events", json={"type": "tick", "data": {"n": n}},
                                 headers=AUTH)
            assert answer.status_code == 201, answer.text
            if after:
                after(n)
            threading.Event().wait(spacing)


@pytest.mark.parametrize("transports", [None, ["xhr_polling"]], ids=["fallback", "long-polling"])
def test_herald_js_through_round_robin_nginx_gets_every_event_once_while_a_node_dies(
        browser, cluster, balancer, transports):  # noqa: F811
    nodes = cluster(3)
    proxy = balancer(nodes)
    options = {"share": False, "pollWait": 2}
    if transports:
        options["transports"] = transports
    browser.get(proxy.url + "/lab")
    browser.execute_script(SUBSCRIBE, "spread", options)
    wait_for(lambda: browser.execute_script("return h.state") == "connected", timeout=30, interval=0.1)

    def kill_one_node(n):
        if n == EVENTS // 2:
            nodes[1].kill9()

    publisher = threading.Thread(target=publish_through, args=(proxy, "spread", 1, EVENTS, 0.05, kill_one_node))
    publisher.start()
    publisher.join(timeout=120)
    state = received_all(browser, EVENTS, timeout=90)
    offsets = [event["offset"] for event in state["got"]]
    assert offsets == list(range(1, EVENTS + 1)), state
    assert [event["n"] for event in state["got"]] == list(range(1, EVENTS + 1)), state
    assert state["gaps"] == [], state
    assert "websocket" not in state["transports"], state
    if transports:
        assert state["transport"] == "xhr_polling", state
        # The polls were spread over the nodes: each of the three answered some.
        polled_on = proxy.upstreams("GET", "/api/v1/channels/spread/events")
        assert len(polled_on) == 3, polled_on
    # Publishes landed on every node too.
    published_on = proxy.upstreams("POST", "/api/v1/channels/spread/events")
    assert len(published_on) == 3, published_on
