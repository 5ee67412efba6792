"""Web-Hooks and REST-Hooks against a real HTTP receiver; signatures checked with `standardwebhooks`."""

import base64
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from conftest import AUTH, assert_problem, create, wait_for

FAST = ("--allow-private-targets", "--webhook-retry-schedule", "1,1,1", "--webhook-timeout", "2")


class Receiver:
    """A webhook target: answers each path by its script (a list of statuses, the last repeats)."""

    def __init__(self, port=0):
        self.requests = []
        self.connections = []  # the client's (address, port) of each request
        self.scripts = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as most servers

            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((self.path, dict(self.headers.items()), body.decode(), time.monotonic()))
                receiver.connections.append(self.client_address)
                if self.path == "/hang":
                    time.sleep(6)  # past --webhook-timeout
                if self.path == "/slow":
                    time.sleep(5)  # within a --webhook-timeout of 10
                if self.path == "/trickle":
                    return self.trickle()
                script = receiver.scripts.get(self.path, [200])
                status = script.pop(0) if len(script) > 1 else script[0]
                self.send_response(status)
                if status in (429, 503):
                    self.send_header("retry-after", "1")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def do_GET(self):
                receiver.requests.append((self.path, dict(self.headers.items()), "", time.monotonic()))
                self.trickle()

            def trickle(self):
                # The head at once, then the body a byte a second: only a deadline over the
                # whole attempt cuts this.
                self.send_response(200)
                self.send_header("content-length", "60")
                self.end_headers()
                try:
                    for _ in range(60):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(1)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path):
        return [r for r in self.requests if r[0] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def verify(secret, request):
    headers, body = request[1], request[2]
    return Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})


def test_a_checks_callback_gets_its_terminal_event_signed(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 200, "result": {"n": 1}},
                             "callback_url": receiver.url + "/callback"}).json()
        secret = check["callback_secret"]
        assert secret.startswith("whsec_")
        wait_for(lambda: receiver.to("/callback"))
        payload = verify(secret, receiver.to("/callback")[0])  # raises on a bad signature
        assert payload["type"] == "check.done"
        assert payload["data"]["channel"] == f"check:{check['id']}"
        assert payload["data"]["data"]["state"] == "done" and payload["data"]["data"]["result"] == {"n": 1}
        log = api.get("/api/v1/deliveries", params={"check_id": check["id"]}, headers=AUTH).json()
        assert [d["state"] for d in log["deliveries"]] == ["delivered"]
        detail = api.get(f"/api/v1/deliveries/{log['deliveries'][0]['id']}", headers=AUTH).json()
        assert detail["attempt_log"][0]["status_code"] == 200 and detail["attempt_log"][0]["snippet"] == "ok"
        assert detail["id"] == receiver.to("/callback")[0][1]["webhook-id"]


def test_a_subscription_gets_matching_events_and_is_a_rest_resource(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        created = api.post("/api/v1/subscription/", json={"target_url": receiver.url + "/orders",
                                                          "event": "order.*"}, headers=AUTH)
        assert created.status_code == 201
        subscription = created.json()
        assert subscription["secret"].startswith("whsec_") and subscription["state"] == "active"
        assert created.headers["location"] == f"/api/v1/subscription/{subscription['id']}/"
        for type_ in ["order.paid", "invoice.sent", "order.shipped"]:
            api.post("/api/v1/channels/shop/events", json={"type": type_, "data": {"t": type_}}, headers=AUTH)
        wait_for(lambda: len(receiver.to("/orders")) == 2)
        payloads = [verify(subscription["secret"], r) for r in receiver.to("/orders")]
        assert sorted(p["type"] for p in payloads) == ["order.paid", "order.shipped"]
        for path in [f"/api/v1/subscription/{subscription['id']}", f"/api/v1/subscription/{subscription['id']}/"]:
            got = api.get(path, headers=AUTH).json()
            assert got["event"] == "order.*" and "secret" not in got
        listed = api.get("/api/v1/subscription", headers=AUTH).json()["subscriptions"]
        assert [s["id"] for s in listed] == [subscription["id"]]
        updated = api.put(f"/api/v1/subscription/{subscription['id']}/",
                          json={"target_url": receiver.url + "/all", "event": "*"}, headers=AUTH)
        assert updated.status_code == 200 and updated.json()["event"] == "*"
        api.post("/api/v1/channels/shop/events", json={"type": "invoice.sent", "data": {}}, headers=AUTH)
        wait_for(lambda: len(receiver.to("/all")) == 1)
        assert api.delete(f"/api/v1/subscription/{subscription['id']}", headers=AUTH).status_code == 204
        assert api.get(f"/api/v1/subscription/{subscription['id']}/", headers=AUTH).status_code == 404


def test_bad_subscriptions_are_refused_and_nothing_is_created(make_herald):
    herald = make_herald()
    with herald.client() as api:
        for body, words in [({"target_url": "ftp://example.com/x", "event": "*"}, "target_url"),
                            ({"target_url": "https://user:pw@example.com/x", "event": "*"}, "credentials"),
                            ({"target_url": "https://example.com/x", "event": "no spaces"}, "event"),
                            ({"target_url": "https://example.com/x"}, "event"),
                            ({"target_url": "https://example.com/x", "event": "*", "secret": "abc"}, "secret"),
                            ({"target_url": "http://127.0.0.1:9/x", "event": "*"}, "not a public address"),
                            ({"target_url": "https://example.com/x", "event": "*", "extra": 1}, "extra")]:
            assert_problem(api.post("/api/v1/subscription/", json=body, headers=AUTH), 422, words)
        assert_problem(api.post("/api/v1/subscription/", json={}), 401)
        assert api.get("/api/v1/subscription/", headers=AUTH).json()["subscriptions"] == []


def test_failures_are_retried_with_the_same_id_until_delivered(make_herald, receiver):
    herald = make_herald(*FAST)
    receiver.scripts["/flaky"] = [500, 429, 200]
    with herald.client() as api:
        secret = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/flaky", "event": "t"},
                          headers=AUTH).json()["secret"]
        api.post("/api/v1/channels/retry/events", json={"type": "t", "data": 1}, headers=AUTH)
        wait_for(lambda: len(receiver.to("/flaky")) == 3, timeout=30)
        ids = {r[1]["webhook-id"] for r in receiver.to("/flaky")}
        assert len(ids) == 1
        for request in receiver.to("/flaky"):
            verify(secret, request)
        delivery = wait_for(lambda: [d for d in api.get("/api/v1/deliveries", headers=AUTH).json()["deliveries"]
                                     if d["state"] == "delivered"])
        detail = api.get(f"/api/v1/deliveries/{delivery[0]['id']}", headers=AUTH).json()
        assert [a["status_code"] for a in detail["attempt_log"]] == [500, 429, 200]


def test_a_delivery_fails_after_the_last_retry_and_can_be_retried_by_hand(make_herald, receiver):
    herald = make_herald("--allow-private-targets", "--webhook-retry-schedule", "1")
    receiver.scripts["/down"] = [500]
    with herald.client() as api:
        api.post("/api/v1/subscription", json={"target_url": receiver.url + "/down", "event": "*"}, headers=AUTH)
        api.post("/api/v1/channels/x/events", json={"type": "t", "data": 1}, headers=AUTH)
        failed = wait_for(lambda: api.get("/api/v1/deliveries", params={"state": "failed"},
                                          headers=AUTH).json()["deliveries"], timeout=30)
        assert failed[0]["attempts"] == 2
        receiver.scripts["/down"] = [200]
        assert api.post(f"/api/v1/deliveries/{failed[0]['id']}/retry", headers=AUTH).status_code == 202
        wait_for(lambda: api.get(f"/api/v1/deliveries/{failed[0]['id']}", headers=AUTH).json()["state"]
                 == "delivered")


def test_410_gone_deletes_the_subscription(make_herald, receiver):
    herald = make_herald(*FAST)
    receiver.scripts["/gone"] = [410]
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/gone",
                                                              "event": "*"}, headers=AUTH).json()
        api.post("/api/v1/channels/g/events", json={"type": "t", "data": 1}, headers=AUTH)
        wait_for(lambda: api.get(f"/api/v1/subscription/{subscription['id']}",
                                 headers=AUTH).status_code == 404)
        assert len(receiver.to("/gone")) == 1


def test_kill9_with_deliveries_pending_loses_none(make_herald):
    with socket.socket() as probe:  # a port with nothing listening yet: every attempt fails
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    herald = make_herald("--allow-private-targets", "--webhook-retry-schedule", "1,1,1,1,1,1,1,1,1,1",
                         "--webhook-timeout", "2")
    with herald.client() as api:
        api.post("/api/v1/subscription", json={"target_url": f"http://127.0.0.1:{port}/late", "event": "*"},
                 headers=AUTH)
        for n in range(5):
            api.post("/api/v1/channels/crash/events", json={"type": "t", "data": n}, headers=AUTH)
    herald.kill9()
    late = Receiver(port)
    try:
        herald.start()
        wait_for(lambda: len({r[1]["webhook-id"] for r in late.to("/late")}) == 5, timeout=40)
        assert sorted({json.loads(r[2])["data"]["data"] for r in late.to("/late")}) == [0, 1, 2, 3, 4]
    finally:
        late.close()


def test_kill9_loses_no_event_still_in_the_webhook_log(make_herald):
    # A target that accepts and never answers: its first delivery is in flight, the next parks
    # it, and later events stay in the webhook event log, no delivery row made for them yet.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    hang.settimeout(20)
    port = hang.getsockname()[1]
    herald = make_herald("--allow-private-targets", "--webhook-retry-schedule", "1,1,1,1,1",
                         "--webhook-timeout", "3")
    held = []
    try:
        with herald.client() as api:
            subscription = api.post("/api/v1/subscription",
                                    json={"target_url": f"http://127.0.0.1:{port}/late", "event": "*"},
                                    headers=AUTH).json()
            rows = lambda: api.get("/api/v1/deliveries", params={"subscription_id": subscription["id"]},
                                   headers=AUTH).json()["deliveries"]
            publish(api, "logged", 0)
            held.append(hang.accept()[0])  # the first attempt, left unanswered
            publish(api, "logged", 1)
            wait_for(lambda: len(rows()) == 2)
            time.sleep(1)  # the second delivery found the target busy and parked it
            for n in range(2, 6):
                publish(api, "logged", n)
            time.sleep(1)
            assert len(rows()) == 2  # events 2-5 are in the log only
        herald.kill9()
    finally:
        for connection in held:
            connection.close()
        hang.close()
    late = Receiver(port)
    try:
        herald.start()
        wait_for(lambda: len({r[1]["webhook-id"] for r in late.to("/late")}) == 6, timeout=40)
        assert sorted({json.loads(r[2])["data"]["data"] for r in late.to("/late")}) == [0, 1, 2, 3, 4, 5]
    finally:
        late.close()


def test_a_hanging_target_times_out_without_holding_up_a_healthy_one(make_herald, receiver):
    herald = make_herald(*FAST)
    slow = Receiver()  # another server: isolation is per scheme, host and port
    try:
        with herald.client() as api:
            hanging = api.post("/api/v1/subscription", json={"target_url": slow.url + "/hang", "event": "*"},
                               headers=AUTH).json()
            api.post("/api/v1/subscription", json={"target_url": receiver.url + "/healthy", "event": "*"},
                     headers=AUTH)
            for n in range(5):
                publish(api, "iso", n)
            wait_for(lambda: len(receiver.to("/healthy")) == 5)
            stuck = api.get("/api/v1/deliveries", params={"subscription_id": hanging["id"]}, headers=AUTH).json()
            assert {d["state"] for d in stuck["deliveries"]} == {"pending"}  # still waiting on the hanging target

            def timed_out():
                for delivery in stuck["deliveries"]:
                    log = api.get(f"/api/v1/deliveries/{delivery['id']}", headers=AUTH).json()["attempt_log"]
                    if log and "no answer within" in log[0]["error"] and "status_code" not in log[0]:
                        return True
            wait_for(timed_out, timeout=20)
            # One attempt at a time goes to a target not known to be healthy: each waits for the
            # one before it to time out (--webhook-timeout 2).
            arrivals = [r[3] for r in slow.to("/hang")]
            assert all(later - earlier >= 1.5 for earlier, later in zip(arrivals, arrivals[1:])), arrivals
    finally:
        slow.close()


def test_a_target_that_trickles_its_body_is_cut_at_the_timeout(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/trickle", "event": "*"},
                                headers=AUTH).json()
        publish(api, "trickle", 1)

        def first_attempt():
            deliveries = api.get("/api/v1/deliveries", params={"subscription_id": subscription["id"]},
                                 headers=AUTH).json()["deliveries"]
            log = deliveries and api.get(f"/api/v1/deliveries/{deliveries[0]['id']}", headers=AUTH).json()["attempt_log"]
            return log[0] if log else None
        attempt = wait_for(first_attempt, timeout=15)  # the body alone would take 60 s
        assert "no answer within" in attempt["error"], attempt
        assert attempt["duration_ms"] < 5000, attempt


def test_an_http_check_against_a_trickling_target_fails_at_its_timeout(make_herald, receiver):
    herald = make_herald("--allow-private-targets")
    with herald.client() as api:
        check = api.post("/api/v1/checks", json={"kind": "http", "params": {"url": receiver.url + "/trickle",
                                                                            "timeout_ms": 2000}}).json()
        started = time.monotonic()
        ended = api.get(f"/api/v1/checks/{check['id']}", params={"wait": 30}).json()
        assert ended["state"] == "failed" and ended["error"]["code"] == "timeout", ended
        assert time.monotonic() - started < 8


def test_deliveries_to_a_target_reuse_its_connection(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        api.post("/api/v1/subscription", json={"target_url": receiver.url + "/kept", "event": "*"}, headers=AUTH)
        for n in range(5):
            publish(api, "kept", n)
            # Recorded as delivered: its answer was read, and its connection is free again (the
            # receiver sees a request before it answers; the next one sent then needs another).
            wait_for(lambda: len(api.get("/api/v1/deliveries", params={"state": "delivered"},
                                         headers=AUTH).json()["deliveries"]) == n + 1)
    # One after another: every delivery after the first goes over the first one's connection.
    assert len(set(receiver.connections)) == 1, receiver.connections


def test_first_attempts_to_new_targets_start_at_the_suspect_rate(make_herald):
    # 2 a second, in bursts of 1: six new targets are tried over 2.5 s, not at once.
    herald = make_herald(*FAST, env={"HERALD_WEBHOOK_SUSPECT_RATE": "2"})
    targets = [Receiver() for _ in range(6)]
    try:
        with herald.client() as api:
            for target in targets:
                api.post("/api/v1/subscription", json={"target_url": target.url + "/new", "event": "*"},
                         headers=AUTH)
            publish(api, "rate", 0)
            wait_for(lambda: all(target.to("/new") for target in targets), timeout=20)
        arrivals = sorted(target.to("/new")[0][3] for target in targets)
        assert arrivals[-1] - arrivals[0] >= 2.0, arrivals
    finally:
        for target in targets:
            target.close()


def test_replay_queues_again_what_a_subscription_matches_since_a_time(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        for type_ in ["a.one", "b.two", "a.three"]:
            api.post("/api/v1/channels/past/events", json={"type": type_, "data": type_}, headers=AUTH)
        subscription = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/late", "event": "a.*"},
                                headers=AUTH).json()
        assert api.post(f"/api/v1/subscription/{subscription['id']}/replay", json={"since": "2000-01-01T00:00:00Z"},
                        headers=AUTH).json() == {"queued": 2}
        wait_for(lambda: len(receiver.to("/late")) == 2)
        assert sorted(verify(subscription["secret"], r)["data"]["data"] for r in receiver.to("/late")) == ["a.one", "a.three"]
        assert_problem(api.post(f"/api/v1/subscription/{subscription['id']}/replay", json={"since": "yesterday"},
                                headers=AUTH), 422, "since")


def publish(api, channel, data, type_="t"):
    assert api.post(f"/api/v1/channels/{channel}/events", json={"type": type_, "data": data},
                    headers=AUTH).status_code == 201


def test_a_rotated_secret_signs_beside_the_new_one_until_its_overlap_ends(make_herald, receiver):
    herald = make_herald(*FAST)
    receiver.scripts["/rot"] = [500, 200]  # the first attempt fails: its retry comes after the rotation
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/rot", "event": "*"},
                                headers=AUTH).json()
        path = f"/api/v1/subscription/{subscription['id']}"
        old = subscription["secret"]
        publish(api, "rot", 0)
        wait_for(lambda: len(receiver.to("/rot")) == 1)
        rotated = api.post(path + "/rotate", json={"overlap": 3600}, headers=AUTH)
        assert rotated.status_code == 200
        new = rotated.json()["secret"]
        assert new.startswith("whsec_") and new != old and "previous_secret_expires_at" in rotated.json()
        shown = api.get(path, headers=AUTH).json()
        assert "secret" not in shown and shown["previous_secret_expires_at"] == rotated.json()["previous_secret_expires_at"]

        wait_for(lambda: len(receiver.to("/rot")) == 2)
        retried = receiver.to("/rot")[1]  # queued before the rotation, signed as the subscription is now
        assert len(retried[1]["webhook-signature"].split(" ")) == 2
        verify(old, retried)
        verify(new, retried)

        newest = api.post(path + "/rotate", json={"overlap": 0}, headers=AUTH).json()["secret"]
        publish(api, "rot", 1)
        wait_for(lambda: len(receiver.to("/rot")) == 3)
        verify(newest, receiver.to("/rot")[2])
        with pytest.raises(WebhookVerificationError):
            verify(new, receiver.to("/rot")[2])

        # A PUT with a new secret is a rotation too, with the default overlap.
        chosen = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        assert api.put(path, json={"target_url": receiver.url + "/rot", "event": "*", "secret": chosen},
                       headers=AUTH).status_code == 200
        publish(api, "rot", 2)
        wait_for(lambda: len(receiver.to("/rot")) == 4)
        verify(chosen, receiver.to("/rot")[3])
        verify(newest, receiver.to("/rot")[3])

        # Bad rotations change nothing.
        assert_problem(api.post(path + "/rotate", json={"secret": "nope"}, headers=AUTH), 422, "secret")
        assert_problem(api.post(path + "/rotate", json={"overlap": -1}, headers=AUTH), 422, "overlap")
        assert_problem(api.post(path + "/rotate", json={"color": 1}, headers=AUTH), 422, "color")
        assert_problem(api.post(path + "/rotate", content=b"{", headers={**AUTH, "content-type": "application/json"}),
                       400)
        assert_problem(api.post("/api/v1/subscription/sub_nope/rotate", headers=AUTH), 404)
        assert_problem(api.post(path + "/rotate"), 401)
        publish(api, "rot", 3)
        wait_for(lambda: len(receiver.to("/rot")) == 5)
        verify(chosen, receiver.to("/rot")[4])
        # With no body, a secret is generated.
        generated = api.post(path + "/rotate", headers=AUTH).json()["secret"]
        assert generated.startswith("whsec_") and generated != chosen


def test_a_callback_can_receive_every_event_of_its_check(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        check = create(api, {"kind": "delay", "params": {"ms": 300}, "callback_url": receiver.url + "/every",
                             "callback_events": "all"}).json()
        assert check["callback_events"] == "all"
        wait_for(lambda: len(receiver.to("/every")) == 2)
        payloads = [verify(check["callback_secret"], r) for r in receiver.to("/every")]
        assert sorted(p["type"] for p in payloads) == ["check.created", "check.done"]
        assert {p["data"]["channel"] for p in payloads} == {f"check:{check['id']}"}
        terminal = create(api, {"kind": "delay", "params": {"ms": 1}, "callback_url": receiver.url + "/end"}).json()
        assert terminal["callback_events"] == "terminal"
        wait_for(lambda: api.get(f"/api/v1/checks/{terminal['id']}").json()["state"] == "done")
        wait_for(lambda: receiver.to("/end"))
        assert [json.loads(r[2])["type"] for r in receiver.to("/end")] == ["check.done"]
        for body, words in [({"callback_url": receiver.url + "/x", "callback_events": "some"}, "callback_events"),
                            ({"callback_events": "all"}, "without callback_url")]:
            assert_problem(create(api, {"kind": "delay", "params": {"ms": 1}, **body}), 422, words)


def test_410_on_a_checks_callback_stops_its_callbacks(make_herald, receiver):
    herald = make_herald(*FAST)
    receiver.scripts["/gone"] = [410]
    with herald.client() as api:
        check = create(api, {"kind": "external", "callback_url": receiver.url + "/gone",
                             "callback_events": "all"}).json()
        by_check = {"check_id": check["id"]}
        wait_for(lambda: [d for d in api.get("/api/v1/deliveries", params=by_check, headers=AUTH).json()["deliveries"]
                          if d["state"] == "failed"])
        assert api.post(f"/api/v1/checks/{check['id']}/complete", json={"state": "done"},
                        headers=AUTH).status_code == 200
        # The terminal event is written with its deliveries: none was queued for the gone target.
        deliveries = api.get("/api/v1/deliveries", params=by_check, headers=AUTH).json()["deliveries"]
        assert [d["event_type"] for d in deliveries] == ["check.created"]
        assert len(receiver.to("/gone")) == 1


def test_a_target_that_keeps_failing_trips_its_circuit_and_is_probed_once_per_cooldown(make_herald, receiver):
    herald = make_herald(*FAST[:2], "1,1,1,1,1,1,1,1,1,1", "--webhook-timeout", "2",
                         env={"HERALD_WEBHOOK_MAX_PER_TARGET": "1", "HERALD_WEBHOOK_BREAKER_FAILURES": "3",
                              "HERALD_WEBHOOK_BREAKER_COOLDOWN": "3"})
    receiver.scripts["/down"] = [500, 500, 500, 500, 200]  # three failures, a failed probe, a good probe
    with herald.client() as api:
        api.post("/api/v1/subscription", json={"target_url": receiver.url + "/down", "event": "*"}, headers=AUTH)
        for n in range(5):
            publish(api, "cb", n)

        def delivered():
            listed = api.get("/api/v1/deliveries", headers=AUTH).json()["deliveries"]
            return len(listed) == 5 and all(d["state"] == "delivered" for d in listed) and listed
        listed = wait_for(delivered, timeout=40)
        arrivals = [r[3] for r in receiver.to("/down")]
        # Open for its cooldown after the third failure, again after the failed probe: nothing in between.
        assert arrivals[3] - arrivals[2] >= 2.5 and arrivals[4] - arrivals[3] >= 2.5
        # Held deliveries are postponed, not attempted: every attempt is one request the target saw.
        assert len(arrivals) == 9 == sum(d["attempts"] for d in listed)


def test_a_subscription_failing_for_too_long_is_disabled_until_a_put(make_herald, receiver):
    herald = make_herald(*FAST[:2], "1,1,1,1,1,1,1,1,1,1", "--webhook-timeout", "2",
                         env={"HERALD_WEBHOOK_DISABLE_AFTER": "2", "HERALD_WEBHOOK_BREAKER_FAILURES": "100"})
    receiver.scripts["/down"] = [500]
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/down", "event": "*"},
                                headers=AUTH).json()
        path = f"/api/v1/subscription/{subscription['id']}"
        by_subscription = {"subscription_id": subscription["id"]}
        publish(api, "dis", 0)
        disabled = wait_for(lambda: (s := api.get(path, headers=AUTH).json())["state"] == "disabled" and s)
        assert disabled["disabled_at"] >= disabled["failing_since"] and disabled["disabled_reason"] == "failing"
        deliveries = api.get("/api/v1/deliveries", params=by_subscription, headers=AUTH).json()["deliveries"]
        assert [d["state"] for d in deliveries] == ["failed"]
        publish(api, "dis", 1)  # nothing is queued for a disabled subscription
        assert len(api.get("/api/v1/deliveries", params=by_subscription, headers=AUTH).json()["deliveries"]) == 1

        receiver.scripts["/down"] = [200]
        enabled = api.put(path, json={"target_url": receiver.url + "/down", "event": "*"}, headers=AUTH).json()
        assert enabled["state"] == "active" and "disabled_at" not in enabled and "failing_since" not in enabled
        assert "disabled_reason" not in enabled
        publish(api, "dis", 2)
        wait_for(lambda: [r for r in receiver.to("/down") if json.loads(r[2])["data"]["data"] == 2])


def test_a_subscription_past_its_lag_cap_is_disabled_and_the_others_go_on(make_herald, receiver):
    herald = make_herald(*FAST, env={"HERALD_WEBHOOK_MAX_LAG_EVENTS": "10", "HERALD_JANITOR_INTERVAL": "1"})
    other = Receiver()  # another target: a target's slots are its own
    with herald.client() as api:
        def subscribe(url):
            return api.post("/api/v1/subscription", json={"target_url": url, "event": "lag.*"},
                            headers=AUTH).json()["id"]
        slow, healthy = subscribe(receiver.url + "/hang"), subscribe(other.url + "/ok")
        for n in range(40):
            publish(api, "lag", n, type_="lag.t")
        disabled = wait_for(lambda: (s := api.get(f"/api/v1/subscription/{slow}", headers=AUTH).json())["state"]
                            == "disabled" and s, timeout=20)
        assert disabled["disabled_reason"] == "lag_events" and "disabled_at" in disabled
        wait_for(lambda: len(other.to("/ok")) == 40)
        assert sorted(json.loads(r[2])["data"]["data"] for r in other.to("/ok")) == list(range(40))
        other.close()
        assert api.get(f"/api/v1/subscription/{healthy}", headers=AUTH).json()["state"] == "active"
        # What waited for it failed with it (a replay after a PUT sends it again).
        pending = api.get("/api/v1/deliveries", params={"subscription_id": slow, "state": "pending"},
                          headers=AUTH).json()["deliveries"]
        assert pending == []


def test_a_refused_connection_fails_the_attempt_at_once(make_herald):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    herald = make_herald("--allow-private-targets", "--webhook-retry-schedule", "600", "--webhook-timeout", "60")
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": f"http://127.0.0.1:{port}/x",
                                                               "event": "*"}, headers=AUTH).json()
        publish(api, "refused", 0)
        by_subscription = {"subscription_id": subscription["id"]}

        def first_attempt():
            deliveries = api.get("/api/v1/deliveries", params=by_subscription, headers=AUTH).json()["deliveries"]
            if deliveries and deliveries[0]["attempts"] == 1:
                return api.get(f"/api/v1/deliveries/{deliveries[0]['id']}", headers=AUTH).json()["attempt_log"][0]
        # Well inside the 60 s timeout: the refusal is the attempt's end, not a reason to wait.
        attempt = wait_for(first_attempt, timeout=20)
        assert "status_code" not in attempt and "refused" in attempt["error"].lower(), attempt
        assert attempt["duration_ms"] < 20_000


def test_sigterm_mid_attempt_leaves_the_delivery_leased_and_logs_no_failure(make_herald, receiver):
    herald = make_herald("--allow-private-targets", "--webhook-timeout", "15")
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": receiver.url + "/hang", "event": "*"},
                                headers=AUTH).json()
        publish(api, "stop", 0)
        wait_for(lambda: receiver.to("/hang"))  # the attempt is in flight
    assert herald.terminate() == 0
    assert not [line for line in herald.output if "failed" in line], "".join(herald.output)
    herald.start()
    with herald.client() as api:
        deliveries = api.get("/api/v1/deliveries", params={"subscription_id": subscription["id"]},
                             headers=AUTH).json()["deliveries"]
    # The cut attempt is not counted: the delivery is sent again, with the same id, after its lease.
    assert [(d["state"], d["attempts"]) for d in deliveries] == [("pending", 0)]


def test_the_ssrf_guard_applies_at_delivery_time(make_herald, receiver):
    herald = make_herald(*FAST)
    with herald.client() as api:
        api.post("/api/v1/subscription", json={"target_url": receiver.url + "/private", "event": "*"}, headers=AUTH)
    herald.terminate()
    herald.args = [a for a in herald.args if a != "--allow-private-targets"]  # same store, private targets refused
    herald.start()
    with herald.client() as api:
        publish(api, "ssrf", 0)

        def refused():
            listed = api.get("/api/v1/deliveries", headers=AUTH).json()["deliveries"]
            log = listed and api.get(f"/api/v1/deliveries/{listed[0]['id']}", headers=AUTH).json()["attempt_log"]
            return log and log[0]
        attempt = wait_for(refused)
        assert "not a public address" in attempt["error"] and "status_code" not in attempt
        assert receiver.to("/private") == []


def test_a_put_sends_pending_deliveries_to_the_new_target(make_herald, receiver):
    with socket.socket() as probe:  # a port with nothing listening: every attempt fails
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/old"
    herald = make_herald(*FAST[:2], "1,1,1,1,1,1,1,1,1,1", "--webhook-timeout", "2")
    with herald.client() as api:
        subscription = api.post("/api/v1/subscription", json={"target_url": dead, "event": "*"}, headers=AUTH).json()
        publish(api, "move", 0)
        pending = wait_for(lambda: [d for d in api.get("/api/v1/deliveries", headers=AUTH).json()["deliveries"]
                                    if d["attempts"] >= 1])[0]
        assert pending["state"] == "pending" and pending["target_url"] == dead
        assert api.put(f"/api/v1/subscription/{subscription['id']}",
                       json={"target_url": receiver.url + "/new", "event": "*"}, headers=AUTH).status_code == 200
        wait_for(lambda: receiver.to("/new"), timeout=30)
        assert receiver.to("/new")[0][1]["webhook-id"] == pending["id"]
        moved = api.get(f"/api/v1/deliveries/{pending['id']}", headers=AUTH).json()
        assert moved["target_url"] == receiver.url + "/new"
