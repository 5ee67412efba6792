#!/usr/bin/env python3
"""Subscription churn (issue 15): does Herald's memory stay bounded while clients send
subscribe/unsubscribe pairs as fast as they can, and come back down when they leave?

For each binary given (default: the release build in .build-release), a fresh server; then,
one transport at a time, `--sockets` connections (4) each pipeline `--pairs` (50,000)
subscribe + unsubscribe pairs of one channel while reading every answer (a WebSocket client
stays at most 200 ops ahead of its answers, as one that reads them does), over the WebSocket
(`/api/v1/ws`) and over a gRPC `Subscribe` call (grpcio, stubs generated from the repository's
proto). The server's resident memory (VmRSS) is sampled every 0.2 s: before, at its peak, and
10 s after the clients left. The issue measured, before its fixes, 44 MB growing to 909 MB
over the WebSocket, and staying there.

Needs only the clone and its venv (websockets, grpcio, grpcio-tools):
    .venv/bin/python scripts/bench_churn.py [--binary PATH ...] [--sockets 4] [--pairs 50000]
"""

import argparse
import asyncio
import importlib
import json
import pathlib
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc
from websockets.asyncio.client import connect as ws_connect

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "bench-churn-key-0123456789abcdef"


def rss_mib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Herald:
    def __init__(self, binary):
        self.data = tempfile.mkdtemp(prefix="herald-churn-")
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", "--grpc-port", str(free_port()),
                                      "--data-dir", self.data,
                                      "--api-key", KEY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.url = self.grpc = None
        for line in self.proc.stdout:
            if match := re.search(r"listening on (http://\S+) \(gRPC on port (\d+)\)", line):
                self.url, self.grpc = match.group(1), int(match.group(2))
                break
        assert self.url, "herald did not start"
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Sampler:
    """VmRSS of `pid` every 0.2 s while running; `peak` is the largest seen."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0.0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.2)

    def stop(self):
        self.running = False
        self.thread.join()


async def websocket_churn(herald, sockets, pairs):
    url = herald.url.replace("http://", "ws://") + "/api/v1/ws"

    async def one(n):
        async with ws_connect(url, max_size=None) as ws:
            answers = 0

            async def read():
                nonlocal answers
                async for _ in ws:
                    answers += 1
                    if answers >= 2 * pairs:
                        return

            reader = asyncio.create_task(read())
            for i in range(pairs):
                await ws.send(json.dumps({"op": "subscribe", "channel": f"churn-{n}", "id": 2 * i}))
                await ws.send(json.dumps({"op": "unsubscribe", "channel": f"churn-{n}", "id": 2 * i + 1}))
                # Ahead of the answers by at most 200 ops: the server cuts a client whose
                # answers queue past ws-max-queued-frames (a slow consumer), which this is not.
                while 2 * (i + 1) - answers > 200:
                    await asyncio.sleep(0.001)
            await asyncio.wait_for(reader, 300)
    await asyncio.gather(*(one(n) for n in range(sockets)))


def grpc_stubs():
    out = pathlib.Path(tempfile.mkdtemp(prefix="herald-churn-proto-"))
    (out / "herald.proto").write_text((ROOT / "Sources/HeraldServer/Public/herald.proto").read_text())
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    assert protoc.main(["protoc", f"-I{out}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                        str(out / "herald.proto")]) == 0
    sys.path.insert(0, str(out))
    return importlib.import_module("herald_pb2"), importlib.import_module("herald_pb2_grpc")


def grpc_churn(herald, sockets, pairs, pb):
    m, services = pb

    def one(n):
        stub = services.HeraldStub(grpc.insecure_channel(f"127.0.0.1:{herald.grpc}"))

        def commands():
            for i in range(pairs):
                yield m.SubscribeRequest(subscribe=m.ChannelSubscribe(channel=f"churn-{n}"), request_id=2 * i)
                yield m.SubscribeRequest(unsubscribe=m.ChannelUnsubscribe(channel=f"churn-{n}"), request_id=2 * i + 1)
        # The call ends OK once the commands are done and nothing is subscribed.
        for _ in stub.Subscribe(commands(), timeout=600):
            pass

    threads = [threading.Thread(target=one, args=(n,)) for n in range(sockets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(binary, transport, sockets, pairs, pb):
    herald = Herald(binary)
    try:
        time.sleep(1)
        before = rss_mib(herald.proc.pid)
        sampler = Sampler(herald.proc.pid)
        started = time.monotonic()
        if transport == "websocket":
            asyncio.run(websocket_churn(herald, sockets, pairs))
        else:
            grpc_churn(herald, sockets, pairs, pb)
        elapsed = time.monotonic() - started
        time.sleep(10)
        sampler.stop()
        after = rss_mib(herald.proc.pid)
        return {"binary": binary, "transport": transport, "before": before, "peak": sampler.peak, "after": after,
                "seconds": elapsed, "alive": herald.proc.poll() is None}
    finally:
        herald.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", action="append", help="herald binaries to measure (repeatable)")
    parser.add_argument("--sockets", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=50_000)
    parser.add_argument("--transports", default="websocket,grpc")
    args = parser.parse_args()
    binaries = args.binary or [str(ROOT / ".build-release" / "release" / "herald")]
    pb = grpc_stubs()
    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}")
    print("| binary | transport | connections x pairs | RSS before MiB | peak MiB | 10 s after MiB | churn s | alive |")
    print("|---|---|---|---|---|---|---|---|")
    for binary in binaries:
        for transport in args.transports.split(","):
            r = measure(binary, transport, args.sockets, args.pairs, pb)
            print(f"| {r['binary']} | {r['transport']} | {args.sockets} x {args.pairs:,} | {r['before']:.1f} "
                  f"| {r['peak']:.1f} | {r['after']:.1f} | {r['seconds']:.1f} | {r['alive']} |", flush=True)
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
