#!/usr/bin/env python3
"""Soak test (issue 15): does Herald's memory, open files and SQLite size level off under a
steady mixed load with short retention, or does something keep growing?

Starts the release binary on a fresh data directory with history-max-events 1000,
history-max-age 120, check-retention 120, janitor-interval 10, webhook-max-lag-events 10000
(so the dead and trickling targets' subscriptions reach their lag cap within minutes, where the
default of 100,000 would take this load about 25) and --allow-private-targets,
then, for --minutes (default 10), all at once from this one asyncio process:

  publishing   50 events/s over 4 channels (soak-0..3, ~300-byte payloads); 1 a second has
               type soak.hook, the others soak.tick
  checks       5 delay checks/s (100 ms); every 5th with a callback_url to the healthy target
  SSE          4 readers (one per channel, resuming with Last-Event-ID when cut), 4 churners
               (connect, read 0.5-4 s, drop the connection, again), 1 that stops reading (a
               plain socket with a 16 KiB receive buffer that asks for soak-0 from 0)
  WebSocket    2 readers (all 4 channels, resuming), 4 churners (half close cleanly, half
               abort the TCP connection), 1 that stops reading (all 4 channels)
  long polls   4 pollers (wait=30, one per channel) and 2 impatient ones that give up after 1-5 s
  webhooks     targets served here: healthy (204 at once, event "*"), dead (a closed port,
               event "*"), slow (204 after 5 s, event soak.hook), trickling (headers, then one
               body byte a second, event soak.hook)

Every 10 s it samples the server: RSS (VmRSS), threads, open files (/proc/PID/fd), CPU, the
sizes of herald.sqlite, -wal and -shm, and (through a read-only sqlite3 connection) the rows of
the tables that retention should bound, and Herald's end of the two stalled subscribers'
connections (TCP state and bytes in its send buffer; FIN_WAIT1 once Herald has cut one); plus
the load's own counters, among them `gaps` (a resuming reader got an offset other than its
last + 1) and `resets` (loss signals and slow-consumer cuts sent to the readers). It prints one
CSV row per sample as it goes, then a per-minute table (the last sample of each minute) and a
summary (first, max, last-minute average), how far each webhook subscription is behind the
webhook event log, what became of the two stalled subscribers, and how Herald stopped on
SIGTERM. A server that dies ends the run early, with its exit status and log tail.

Needs only the clone and its venv (httpx, httpx-sse, websockets): release build in
.build-release, then
    .venv/bin/python scripts/soak.py [--minutes 10] [--binary .build-release/release/herald]
"""

import argparse
import asyncio
import json
import os
import pathlib
import random
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import httpx_sse
from websockets.asyncio.client import connect as ws_connect

ROOT = pathlib.Path(__file__).resolve().parents[1]
KEY = "soak-key-0123456789abcdef"
CHANNELS = [f"soak-{n}" for n in range(4)]
CONFIG = {"history-max-events": 1000, "history-max-age": 120, "check-retention": 120, "janitor-interval": 10,
          "webhook-max-lag-events": 10_000}
TABLES = ["channels", "events", "checks", "webhook_events", "deliveries", "delivery_attempts"]
PAD = "p" * 240

stats = {k: 0 for k in ("published", "publish_errors", "checks", "check_errors", "sse_events", "sse_cuts",
                        "ws_events", "ws_cuts", "lp_events", "churns", "hook_healthy", "hook_slow",
                        "hook_trickle", "gaps", "resets")}
acks = []  # publish ack latencies (ms) since the last sample
stop = asyncio.Event()
in_flight = set()  # requests started by `paced` (asyncio keeps only weak references to tasks)
last_seen = {}  # (reader, channel) -> last offset, to count gaps and repeats in what readers get


def seen(reader, channel, offset):
    """Counts an event a resuming reader got out of order: the next offset is always last + 1."""
    last = last_seen.get((reader, channel))
    if last is not None and offset != last + 1:
        stats["gaps"] += 1
        print(f"# {reader} on {channel}: offset {offset} after {last}", file=sys.stderr)
    last_seen[(reader, channel)] = offset


async def paced(rate, action):
    """Calls `action(n)` rate times a second until stop, without catching up after a stall."""
    n, next_at = 0, time.monotonic()
    while not stop.is_set():
        task = asyncio.create_task(action(n))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        n += 1
        next_at = max(next_at + 1 / rate, time.monotonic() - 1)
        await asyncio.sleep(max(0, next_at - time.monotonic()))


# --- load -------------------------------------------------------------------------------------

async def publishing(client):
    async def publish(n):
        channel = CHANNELS[n % len(CHANNELS)]
        kind = "soak.hook" if n % 50 == 0 else "soak.tick"
        sent = time.monotonic()
        try:
            r = await client.post(f"/api/v1/channels/{channel}/events",
                                  json={"type": kind, "data": {"n": n, "pad": PAD}})
            r.raise_for_status()
            stats["published"] += 1
            acks.append((time.monotonic() - sent) * 1000)
        except httpx.HTTPError:
            stats["publish_errors"] += 1
    await paced(50, publish)


async def checking(client, callback_url):
    async def create(n):
        body = {"kind": "delay", "params": {"ms": 100}}
        if n % 5 == 0:
            body["callback_url"] = callback_url
        try:
            (await client.post("/api/v1/checks", json=body)).raise_for_status()
            stats["checks"] += 1
        except httpx.HTTPError:
            stats["check_errors"] += 1
    await paced(5, create)


async def sse_reader(client, channel):
    last_id = None
    while not stop.is_set():
        position = {"headers": {"Last-Event-ID": last_id}} if last_id else {"params": {"since": 0}}
        try:
            async with httpx_sse.aconnect_sse(client, "GET", f"/api/v1/channels/{channel}/events",
                                              **position) as source:
                async for event in source.aiter_sse():
                    if event.event == "herald.reset":
                        stats["resets"] += 1
                    if event.id:
                        last_id = event.id
                        seen(f"sse-{channel}", channel, int(event.id.rsplit(":", 1)[1]))
                        stats["sse_events"] += 1
        except (httpx.HTTPError, httpx_sse.SSEError):
            pass
        if not stop.is_set():
            stats["sse_cuts"] += 1
            await asyncio.sleep(0.5)


async def sse_churner(client, n):
    while not stop.is_set():
        try:
            async with asyncio.timeout(random.uniform(0.5, 4)):
                async with httpx_sse.aconnect_sse(client, "GET",
                                                  f"/api/v1/channels/{CHANNELS[n % 4]}/events") as source:
                    async for _ in source.aiter_sse():
                        pass
        except (TimeoutError, httpx.HTTPError, httpx_sse.SSEError):
            pass
        stats["churns"] += 1
        await asyncio.sleep(random.uniform(0, 2))


async def ws_reader(url, n):
    since = {c: 0 for c in CHANNELS}
    while not stop.is_set():
        try:
            async with ws_connect(url) as ws:
                for c in CHANNELS:
                    await ws.send(json.dumps({"op": "subscribe", "channel": c, "since": since[c]}))
                async for message in ws:
                    m = json.loads(message)
                    if m.get("op") in ("reset", "error"):
                        stats["resets"] += 1
                    if m.get("op") == "event":
                        seen(f"ws-{n}", m["channel"], m["offset"])
                        since[m["channel"]] = m["offset"]
                        stats["ws_events"] += 1
        except Exception:  # noqa: BLE001 - any cut is counted and resumed
            pass
        if not stop.is_set():
            stats["ws_cuts"] += 1
            await asyncio.sleep(0.5)


async def ws_churner(url, n):
    while not stop.is_set():
        try:
            async with ws_connect(url) as ws:
                for c in CHANNELS[: 1 + n % 2]:
                    await ws.send(json.dumps({"op": "subscribe", "channel": c}))
                try:
                    async with asyncio.timeout(random.uniform(0.5, 4)):
                        async for _ in ws:
                            pass
                except TimeoutError:
                    pass
                if n % 2:
                    ws.transport.abort()  # vanish: no close frame
        except Exception:  # noqa: BLE001
            pass
        stats["churns"] += 1
        await asyncio.sleep(random.uniform(0, 2))


async def long_poller(client, channel, impatient):
    since, epoch = 0, ""
    while not stop.is_set():
        try:
            async with asyncio.timeout(random.uniform(1, 5) if impatient else 40):
                r = await client.get(f"/api/v1/channels/{channel}/events",
                                     params={"since": since, "epoch": epoch, "wait": 30})
            body = r.json()
            stats["resets"] += body["recovered"] is False and since > 0
            if not impatient:
                for event in body["events"]:
                    seen(f"lp-{channel}", channel, event["offset"])
            since, epoch = body["next"], body["epoch"]
            stats["lp_events"] += len(body["events"])
        except (TimeoutError, httpx.HTTPError, ValueError, KeyError):
            await asyncio.sleep(0.2)
        stats["churns"] += impatient


def sse_staller(port):
    """A plain socket with a small receive buffer asks for soak-0's SSE stream from offset 0 and
    never reads (an HTTP library would keep reading into its own buffers)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/v1/channels/{CHANNELS[0]}/events?since=0&format=sse HTTP/1.1\r\n"
                 "Host: soak\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def drain_socket(sock, seconds=10):
    """Reads what is left; an end of stream within `seconds` means Herald had closed it."""
    sock.settimeout(seconds)
    total, end = 0, time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            chunk = sock.recv(65536)
            if not chunk:
                return f"cut by the server (end of stream after {total} more bytes)"
            total += len(chunk)
    except TimeoutError:
        pass
    except OSError as error:
        return f"cut by the server ({error} after {total} more bytes)"
    return f"still open after reading {total} more bytes"


def server_side(server_port, client_port):
    """Herald's end of a connection, from /proc/net/tcp: its TCP state and the bytes waiting in
    its send buffer. A client that does not read never sees Herald's FIN (it is queued behind
    the unsent bytes), so Herald's end (FIN_WAIT1 once it has closed) is the one to watch."""
    states = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE",
              "08": "CLOSE_WAIT", "0B": "CLOSING"}
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (server_port, client_port):
            return f"{states.get(fields[3], fields[3])} {int(fields[4].split(':')[0], 16) // 1024}KiB"
    return "gone"


async def ws_staller(url):
    """Subscribes to every channel from 0 and never reads (its client stops taking frames)."""
    ws = await ws_connect(url, max_queue=1, ping_interval=None)
    for c in CHANNELS:
        await ws.send(json.dumps({"op": "subscribe", "channel": c, "since": 0}))
    return ws


# --- webhook targets --------------------------------------------------------------------------

def target(name, delay=0.0, trickle=False):
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                stats[f"hook_{name}"] += 1
                if trickle:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 60\r\n\r\n")
                    for _ in range(60):
                        await writer.drain()
                        await asyncio.sleep(1)
                        writer.write(b".")
                    continue
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
    return handle


async def start_target(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


# --- sampling ---------------------------------------------------------------------------------

def proc_sample(pid, store):
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    field = {line.split(":")[0]: line.split(":")[1].split() for line in status.splitlines() if ":" in line}
    ticks = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    sizes = {suffix: (store / f"herald.sqlite{suffix}").stat().st_size
             if (store / f"herald.sqlite{suffix}").exists() else 0 for suffix in ("", "-wal", "-shm")}
    rows = {}
    try:
        db = sqlite3.connect(f"file:{store / 'herald.sqlite'}?mode=ro", uri=True, timeout=5)
        for table in TABLES:
            rows[table] = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        db.close()
    except sqlite3.Error as error:
        print(f"# sqlite3 read failed: {error}", file=sys.stderr)
    return dict(rss_kib=int(field["VmRSS"][0]), threads=int(field["Threads"][0]),
                fds=len(os.listdir(f"/proc/{pid}/fd")),
                cpu_s=(int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK"),
                db_kib=sizes[""] // 1024, wal_kib=sizes["-wal"] // 1024, shm_kib=sizes["-shm"] // 1024,
                **{f"rows_{t}": rows.get(t, -1) for t in TABLES})


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else 0.0


async def sampler(proc, store, seconds, samples, stalled):
    start = time.monotonic()
    header = None
    while True:
        await asyncio.sleep(10 - (time.monotonic() - start) % 10)
        if proc.returncode is not None or proc.poll() is not None:
            print(f"# HERALD EXITED with status {proc.returncode} at t={time.monotonic() - start:.0f} s",
                  file=sys.stderr)
            stop.set()
            return
        row = dict(t_s=round(time.monotonic() - start), **proc_sample(proc.pid, store),
                   ack_p50_ms=round(percentile(acks, 50), 2), ack_p99_ms=round(percentile(acks, 99), 2),
                   ack_max_ms=round(max(acks, default=0), 1), **stats,
                   **{f"stalled_{name}": server_side(*ports) for name, ports in stalled.items()},
                   load1=pathlib.Path("/proc/loadavg").read_text().split()[0])
        acks.clear()
        samples.append(row)
        if header is None:
            header = list(row)
            print(",".join(header), flush=True)
        print(",".join(str(row[k]) for k in header), flush=True)
        if row["t_s"] >= seconds:
            stop.set()
            return


# --- main -------------------------------------------------------------------------------------

def webhook_report(store, roles):
    """Per subscription: how far its cursor is behind the webhook event log, its deliveries, and
    its last attempt (the log is kept until every active subscription has read it; one past its
    lag cap is disabled, with its reason)."""
    db = sqlite3.connect(f"file:{store / 'herald.sqlite'}?mode=ro", uri=True, timeout=5)
    # The log's numbering goes on when the janitor has emptied it: its end is in sqlite_sequence.
    head = db.execute("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'webhook_events'), 0), "
                      "count(*) FROM webhook_events").fetchone()
    lines = [f"webhook event log: {head[1]} rows, head seq {head[0]}"]
    rows = db.execute("SELECT target_url, event, cursor, disabled_reason FROM subscriptions").fetchall()
    for url, event, cursor, disabled in rows:
        target = url.rsplit("/", 1)[0]
        states = dict(db.execute("SELECT state, count(*) FROM deliveries WHERE target = ? GROUP BY state", (target,)))
        last = db.execute("SELECT a.status_code, a.duration_ms, a.error FROM delivery_attempts a JOIN deliveries d "
                          "ON d.id = a.delivery_id WHERE d.target = ? ORDER BY a.at DESC LIMIT 1", (target,)).fetchone()
        lines.append(f"  {roles.get(url, url)} ({event}): {'disabled: ' + disabled if disabled else 'active'}, "
                     f"cursor {cursor}, {head[0] - cursor} log entries behind, "
                     f"deliveries {states}, last attempt (status, ms, error) {last}")
    db.close()
    return "\n".join(lines)


def report(samples):
    print("\n| min | RSS MiB | open files | threads | herald.sqlite MiB | -wal MiB | rows events | rows checks "
          "| rows webhook_events | rows deliveries | srv CPU % of a core | publish ack p50 / p99 ms (worst sample) "
          "| stalled SSE, Herald's end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    previous = None
    for minute in range(1, samples[-1]["t_s"] // 60 + 2):
        rows = [r for r in samples if minute * 60 - 60 < r["t_s"] <= minute * 60]
        if not rows:
            continue
        last = rows[-1]
        cpu = ((last["cpu_s"] - previous["cpu_s"]) / (last["t_s"] - previous["t_s"]) * 100) if previous else None
        print(f"| {minute} | {last['rss_kib'] / 1024:.1f} | {last['fds']} | {last['threads']} "
              f"| {last['db_kib'] / 1024:.1f} | {last['wal_kib'] / 1024:.1f} | {last['rows_events']:,} "
              f"| {last['rows_checks']:,} | {last['rows_webhook_events']:,} | {last['rows_deliveries']:,} "
              f"| {'-' if cpu is None else f'{cpu:.0f}'} | {max(r['ack_p50_ms'] for r in rows):.1f} / "
              f"{max(r['ack_p99_ms'] for r in rows):.1f} | {last['stalled_sse']} |")
        previous = last
    tail = [r for r in samples if r["t_s"] > samples[-1]["t_s"] - 60]
    print("\n| measure | first | max | last-minute average | last |")
    print("|---|---|---|---|---|")
    for key in ("rss_kib", "fds", "threads", "db_kib", "wal_kib", "shm_kib", "rows_events", "rows_checks",
                "rows_webhook_events", "rows_deliveries", "rows_delivery_attempts"):
        values = [r[key] for r in samples]
        print(f"| {key} | {values[0]} | {max(values)} | {statistics.mean(r[key] for r in tail):.0f} | {values[-1]} |")


async def run(args):
    data = pathlib.Path(tempfile.mkdtemp(prefix="herald-soak-"))
    store = data / "store"
    (data / "config.json").write_text(json.dumps(CONFIG))
    log = open(data / "herald.log", "w")
    proc = subprocess.Popen([args.binary, "serve", "--port", "0", "--grpc-port", "0", "--data-dir", str(store),
                             "--api-key", KEY, "--config", str(data / "config.json"), "--allow-private-targets"],
                            stdout=subprocess.PIPE, stderr=log, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")})
    url = next(line.split("listening on ", 1)[1].split()[0].rstrip("/")
               for line in proc.stdout if "listening on http://" in line)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    ws_url = url.replace("http://", "ws://") + "/api/v1/ws"
    print(f"# herald pid {proc.pid} at {url}, data in {data}, load {pathlib.Path('/proc/loadavg').read_text().strip()}",
          file=sys.stderr)

    healthy, healthy_url = await start_target(target("healthy"))
    slow, slow_url = await start_target(target("slow", delay=5))
    trickle, trickle_url = await start_target(target("trickle", trickle=True))
    auth = {"Authorization": f"Bearer {KEY}"}
    api = httpx.AsyncClient(base_url=url, headers=auth, timeout=30,
                            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    streams = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, read=None),
                                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20))
    roles = {healthy_url: "healthy", closed_port_url(): "dead", slow_url: "slow", trickle_url: "trickling"}
    for target_url, role in roles.items():
        event = "*" if role in ("healthy", "dead") else "soak.hook"
        (await api.post("/api/v1/subscription", json={"target_url": target_url, "event": event})).raise_for_status()

    samples, port = [], int(url.rsplit(":", 1)[1])
    sse_stalled = sse_staller(port)
    ws_stalled = await ws_staller(ws_url)
    tasks = [asyncio.create_task(c) for c in (
        publishing(api), checking(api, healthy_url.replace("/hook", "/callback")),
        *(sse_reader(streams, c) for c in CHANNELS), *(sse_churner(streams, n) for n in range(4)),
        *(ws_reader(ws_url, n) for n in range(2)), *(ws_churner(ws_url, n) for n in range(4)),
        *(long_poller(streams, c, False) for c in CHANNELS),
        *(long_poller(streams, CHANNELS[n], True) for n in range(2)))]
    await sampler(proc, store, args.minutes * 60, samples,
                  {"sse": (port, sse_stalled.getsockname()[1]),
                   "ws": (port, ws_stalled.transport.get_extra_info("sockname")[1])})
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    # What became of the subscribers that stopped reading: drain them; an end means Herald cut them.
    async def drain_ws():
        frames, errors = 0, []
        try:
            async with asyncio.timeout(10):
                async for message in ws_stalled:
                    frames += 1
                    if '"op":"error"' in message.replace(" ", ""):
                        errors.append(json.loads(message).get("code"))
        except TimeoutError:
            return f"still open after reading {frames} more frames"
        except Exception:  # noqa: BLE001
            pass
        return (f"cut by the server (close code {ws_stalled.close_code} {ws_stalled.close_reason!r}, "
                f"{frames} frames drained, error ops {errors})")

    stalled = {"sse": await asyncio.to_thread(drain_socket, sse_stalled), "ws": await drain_ws()}
    hooks = webhook_report(store, roles) if proc.poll() is None else ""
    await api.aclose()
    await streams.aclose()
    for server in (healthy, slow, trickle):
        server.close()

    if samples:
        report(samples)
    print(f"\n{hooks}\n\nstalled SSE subscriber: {stalled['sse']}\nstalled WebSocket subscriber: {stalled['ws']}")
    print("counters: " + json.dumps(stats))
    if proc.poll() is None:
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
            print(f"SIGTERM: exited {proc.returncode} after {time.monotonic() - began:.1f} s")
        except subprocess.TimeoutExpired:
            proc.kill()
            print("SIGTERM: still running after 60 s, killed")
    else:
        print(f"HERALD DIED: exit status {proc.returncode}; log tail:")
        print("".join((data / "herald.log").read_text().splitlines(True)[-20:]))
    log.close()
    lines = (data / "herald.log").read_text().splitlines()
    levels = {}
    for line in lines:
        level = line.split(" ", 2)[1] if line.count(" ") >= 2 else "?"
        levels[level] = levels.get(level, 0) + 1
    print(f"log: {data / 'herald.log'}, lines by level {levels}; "
          f"load at end {pathlib.Path('/proc/loadavg').read_text().strip()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long to run (default 10)")
    parser.add_argument("--binary", default=str(ROOT / ".build-release" / "release" / "herald"),
                        help="the herald binary (default: .build-release/release/herald)")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"no binary at {args.binary}: swift build -c release --product herald --scratch-path .build-release")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
