#!/usr/bin/env python3
"""Webhook delivery benchmark (issue 4): throughput to one healthy target, and a healthy
target's delivery delay with and without many subscriptions whose targets hang.

Builds Herald in release mode (.build-release), starts it on a fresh SQLite store with the
default webhook settings (15 s timeout, 8 per target, breaker after 5 failures), and runs, in
one process tree on loopback:

  1. throughput   N events published by 4 keep-alive connections at full speed to a channel
                  one subscription matches; deliveries per second from the first publish to the
                  last delivery received.
  2. baseline     R events per second for S seconds; the healthy target's delay per delivery
                  (receive time - publish time, one clock): p50, p99, max.
  3. hanging      H more subscriptions (event "*", so every event also goes to each of them),
                  each to its own port of a server that accepts and never answers; the same
                  R x S run, the same healthy delay figures.

The receiver and the hanging server are asyncio processes of their own. Prints a Markdown
table and a JSON line. Usage: scripts/bench_webhooks.py [--rate 20] [--seconds 20]
[--hanging 1000] [--throughput 3000]
"""

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import pathlib
import resource
import subprocess
import tempfile
import threading
import time

from benchlib import release_binary

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "bench-webhooks-key"


def receiver(port_pipe, results_pipe):
    """A webhook target answering 200 at once, recording (type, delay) per delivery."""
    records = []

    class Target(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport, self.buffer = transport, b""

        def data_received(self, data):
            self.buffer += data
            while True:
                head_end = self.buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                length = 0
                for line in self.buffer[:head_end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buffer) < head_end + 4 + length:
                    return
                body = self.buffer[head_end + 4:head_end + 4 + length]
                self.buffer = self.buffer[head_end + 4 + length:]
                now = time.time()
                event = json.loads(body)["data"]
                records.append((event["type"], now - event["data"]["ts"], now))
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    async def main():
        server = await asyncio.get_running_loop().create_server(Target, "127.0.0.1", 0)
        port_pipe.send(server.sockets[0].getsockname()[1])
        while True:
            if results_pipe.poll():
                results_pipe.recv()
                results_pipe.send(records)
            await asyncio.sleep(0.1)

    asyncio.run(main())


def hanging_server(count, port_pipe, stop_pipe):
    """`count` listening ports that accept connections, read, and never answer."""
    held = []

    class Hang(asyncio.Protocol):
        def connection_made(self, transport):
            held.append(transport)

        def data_received(self, data):
            pass

    async def main():
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Hang, "127.0.0.1", 0, backlog=64) for _ in range(count)]
        port_pipe.send([s.sockets[0].getsockname()[1] for s in servers])
        while not stop_pipe.poll():
            await asyncio.sleep(0.2)
        port_pipe.send(len(held))

    asyncio.run(main())


class Herald:
    def __init__(self, binary):
        self.data = tempfile.mkdtemp(prefix="herald-bench-webhooks-")
        self.proc = subprocess.Popen(
            [binary, "serve", "--port", "0", "--grpc-port", "0", "--data-dir", self.data, "--api-key", KEY,
             "--allow-private-targets"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")})
        for line in self.proc.stdout:
            if "listening on" in line:
                self.port = int(line.rsplit(":", 1)[1].strip().strip("/"))
                break
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def connection(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def call(self, method, path, body=None, connection=None):
        own = connection or self.connection()
        own.request(method, path, body=json.dumps(body) if body is not None else None,
                    headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        response = own.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: {response.status} {data[:200]!r}")
        return json.loads(data) if data else None

    def subscribe(self, url, event):
        return self.call("POST", "/api/v1/subscription", {"target_url": url, "event": event})

    def usage(self):
        status = pathlib.Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        ticks = pathlib.Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return rss, (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def publish_paced(herald, type_, rate, seconds):
    """Publishes rate x seconds events; returns how long each POST took to be acknowledged (ms)."""
    connection = herald.connection()
    acks = []
    start = time.monotonic()
    for n in range(rate * seconds):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.time()
        herald.call("POST", "/api/v1/channels/bench/events", {"type": type_, "data": {"n": n, "ts": sent}},
                    connection)
        acks.append((time.time() - sent) * 1000)
    return acks


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=20, help="events per second in the delay runs")
    parser.add_argument("--seconds", type=int, default=20, help="length of each delay run")
    parser.add_argument("--hanging", type=int, default=1000, help="subscriptions whose targets hang")
    parser.add_argument("--throughput", type=int, default=3000, help="events of the throughput run")
    parser.add_argument("--binary", help="a herald binary (default: build .build-release)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary = release_binary(args.binary)

    port_in, port_out = multiprocessing.Pipe()
    results_here, results_there = multiprocessing.Pipe()
    target = multiprocessing.Process(target=receiver, args=(port_out, results_there), daemon=True)
    target.start()
    target_url = f"http://127.0.0.1:{port_in.recv()}"
    hang_in, hang_out = multiprocessing.Pipe()
    hang_stop_here, hang_stop_there = multiprocessing.Pipe()
    hang = multiprocessing.Process(target=hanging_server, args=(args.hanging, hang_out, hang_stop_there),
                                   daemon=True)
    hang.start()
    hang_ports = hang_in.recv()

    herald = Herald(binary)
    rows = {}
    try:
        # 1. Throughput.
        herald.subscribe(target_url + "/fast", "bench.throughput")
        per_thread = args.throughput // 4

        def burst():
            connection = herald.connection()
            for n in range(per_thread):
                herald.call("POST", "/api/v1/channels/bench/events",
                            {"type": "bench.throughput", "data": {"n": n, "ts": time.time()}}, connection)
        started = time.time()
        threads = [threading.Thread(target=burst) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        published = time.time()
        wanted = per_thread * 4
        deadline = time.time() + 300
        while time.time() < deadline:
            done = herald.call("GET", "/api/v1/deliveries?state=pending&limit=1")["deliveries"]
            if not done:
                break
            time.sleep(0.2)
        finished = time.time()
        rows["throughput"] = dict(events=wanted, publish_s=round(published - started, 2),
                                  deliveries_per_s=round(wanted / (finished - started), 1))

        # 2. Baseline delay.
        herald.subscribe(target_url + "/healthy", "bench.lat.*")
        acks = {"base": publish_paced(herald, "bench.lat.base", args.rate, args.seconds)}
        time.sleep(3)
        # 3. With hanging subscriptions.
        for port in hang_ports:
            herald.subscribe(f"http://127.0.0.1:{port}/hook", "*")
        cpu_before = herald.usage()[1]
        acks["hang"] = publish_paced(herald, "bench.lat.hang", args.rate, args.seconds)
        time.sleep(5)
        rss, cpu_after = herald.usage()
        results_here.send("report")
        records = results_here.recv()
        for phase in ("base", "hang"):
            delays = [r[1] * 1000 for r in records if r[0] == f"bench.lat.{phase}"]
            rows[phase] = dict(delivered=len(delays), expected=args.rate * args.seconds,
                               p50_ms=round(percentile(delays, 50), 1), p99_ms=round(percentile(delays, 99), 1),
                               max_ms=round(max(delays), 1), publish_p50_ms=round(percentile(acks[phase], 50), 1),
                               publish_p99_ms=round(percentile(acks[phase], 99), 1))
        rows["hang"].update(rss_mib=round(rss / 1024, 1), cpu_s=round(cpu_after - cpu_before, 1))
        # The worst delay of each second of the run, by when the event was published.
        hang_records = [r for r in records if r[0] == "bench.lat.hang"]
        if hang_records:
            first = min(r[2] - r[1] for r in hang_records)
            worst = {}
            for r in hang_records:
                second = int(r[2] - r[1] - first)
                worst[second] = max(worst.get(second, 0), round(r[1] * 1000, 1))
            rows["hang"]["worst_ms_by_second"] = [worst.get(n, None) for n in range(max(worst) + 1)]
        rows["throughput"]["delivered"] = sum(1 for r in records if r[0] == "bench.throughput")
        pending = herald.call("GET", "/api/v1/deliveries?state=pending&limit=500")["deliveries"]
        rows["hang"]["pending_to_hanging_after"] = len(pending)
        hang_stop_here.send("stop")
        rows["hang"]["connections_to_hanging"] = hang_in.recv()
    finally:
        herald.stop()

    print("| run | delivered | p50 ms | p99 ms | max ms | publish ack p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for phase, label in (("base", "healthy target alone"), ("hang", f"beside {args.hanging} hanging targets")):
        r = rows[phase]
        print(f"| {label} | {r['delivered']}/{r['expected']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} "
              f"| {r['publish_p50_ms']} / {r['publish_p99_ms']} |")
    t = rows["throughput"]
    print(f"\nthroughput: {t['delivered']}/{t['events']} delivered, {t['deliveries_per_s']} deliveries/s")
    print(json.dumps(dict(rows, rate=args.rate, seconds=args.seconds, hanging=args.hanging)))


if __name__ == "__main__":
    main()
