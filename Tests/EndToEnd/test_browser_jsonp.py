"""JSONP executed by a real browser: headless Chromium loads script tags from Herald."""

import shutil
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from conftest import AUTH, create


@pytest.fixture
def browser():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "install Debian's chromium and chromium-driver (scripts/test.sh does)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # Certificate errors are ignored for the TLS tests' self-signed certificate only; nothing else is served.
    for argument in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--ignore-certificate-errors"]:
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(40)
    yield driver
    driver.quit()


LOAD_JSONP = """
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
window.heraldAnswer = (value) => done(value);
const script = document.createElement('script');
script.src = url;
script.onerror = () => done({error: 'script failed'});
document.head.appendChild(script);
"""


def test_a_browser_long_polls_a_check_over_jsonp(browser, herald):
    with herald.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 800, "result": {"html": "</script><b>"}}}).json()
        browser.get(f"{herald.url}/healthz")
        answer = browser.execute_async_script(
            LOAD_JSONP, f"{herald.url}/api/v1/checks/{check['id']}?wait=20&callback=heraldAnswer")
    assert answer["state"] == "done" and answer["result"] == {"html": "</script><b>"}


def page_server():
    """A local web server for an empty page: its own origin (`http://localhost:<port>`)."""
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"<!doctype html><title>elsewhere</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://localhost:{server.server_address[1]}"


@pytest.fixture
def other_origin():
    """A page served by another local web server: a different origin from Herald's."""
    server, origin = page_server()
    yield origin + "/"
    server.shutdown()


def test_a_browser_long_polls_a_channel_over_jsonp_from_another_origin(browser, herald, other_origin):
    with herald.client() as api:
        browser.get(other_origin)
        browser.execute_script(
            "window.result = null; window.heraldAnswer = (v) => { window.result = v; };"
            "const s = document.createElement('script');"
            f"s.src = '{herald.url}/api/v1/channels/browser/events?since=0&wait=20&callback=heraldAnswer';"
            "document.head.appendChild(s);")
        time.sleep(0.5)
        api.post("/api/v1/channels/browser/events", json={"type": "hello", "data": {"n": 1}}, headers=AUTH)
        deadline = time.monotonic() + 20
        result = None
        while result is None and time.monotonic() < deadline:
            result = browser.execute_script("return window.result")
            time.sleep(0.1)
    assert result and result["events"][0]["type"] == "hello" and result["events"][0]["data"] == {"n": 1}
