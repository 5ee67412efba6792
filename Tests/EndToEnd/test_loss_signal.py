"""Issue 15, section 2: a client either gets every event or is told it missed some.

A live stream across a new epoch (the janitor dropped a quiet channel, and its next event
starts again at offset 1), and a position in a store that was restored from a backup."""

import asyncio
import json
import queue
import shutil
import sqlite3
import threading

import httpx
import websockets

from conftest import AUTH, wait_for
from test_sse import publish


def lines_of(herald, params, found):
    """Reads a stream in the background, putting each non-empty line on `found`."""
    def pump():
        try:
            with httpx.Client(base_url=herald.url, timeout=60) as client:
                with client.stream("GET", "/api/v1/channels/quiet/events", params=params) as response:
                    for line in response.iter_lines():
                        if line.strip():
                            found.put(line)
        except httpx.HTTPError:
            pass  # the server stopped at the end of the test
    threading.Thread(target=pump, daemon=True).start()


def collect(found, until, timeout=30):
    """Lines from `found` until one contains `until`."""
    seen = []
    while True:
        line = found.get(timeout=timeout)
        seen.append(line)
        if until in line:
            return seen


def test_live_streams_are_told_when_a_channel_starts_a_new_epoch(make_herald):
    herald = make_herald(config={"history-max-age": 1, "janitor-interval": 1})
    api = herald.client()
    first = publish(api, "quiet", 1)[0]
    old_epoch = first["epoch"]
    position = {"since": 1, "epoch": old_epoch}
    sse, ndjson, ws = queue.Queue(), queue.Queue(), queue.Queue()
    lines_of(herald, {**position, "format": "sse"}, sse)
    lines_of(herald, {**position, "format": "ndjson"}, ndjson)

    async def websocket(ready):
        url = herald.url.replace("http://", "ws://") + "/api/v1/ws"
        async with websockets.connect(url) as connection:
            await connection.send(json.dumps({"op": "subscribe", "channel": "quiet", **position, "id": 1}))
            while True:
                frame = await connection.recv()
                ws.put(frame)
                if '"subscribed"' in frame:
                    ready.set()
    ready = threading.Event()
    def run_websocket():
        try:
            asyncio.run(websocket(ready))
        except websockets.ConnectionClosed:
            pass  # the server stopped at the end of the test
    threading.Thread(target=run_websocket, daemon=True).start()
    assert ready.wait(20)
    # The janitor drops the quiet channel: its events expired, and the channel row goes too.
    wait_for(lambda: api.get("/api/v1/channels/quiet/events", params={"since": 0}).json()["epoch"] == "", 30)
    second = publish(api, "quiet", 1)[0]
    assert second["offset"] == 1 and second["epoch"] != old_epoch

    sse_lines = collect(sse, '"offset":1,"epoch":"%s"' % second["epoch"])
    assert any("herald.reset" in line for line in sse_lines), sse_lines
    assert [line for line in sse_lines if line.startswith("event:")][-2:] == ["event: herald.reset", "event: t"]
    ndjson_lines = [json.loads(line) for line in collect(ndjson, '"offset":1,"epoch":"%s"' % second["epoch"])]
    marks = [line for line in ndjson_lines if line.get("type") == "herald.reset"]
    assert marks and marks[0]["recovered"] is False and marks[0]["epoch"] == second["epoch"]
    assert ndjson_lines[-1]["offset"] == 1 and ndjson_lines[-1]["epoch"] == second["epoch"]
    frames = [json.loads(frame) for frame in collect(ws, '"op":"event"')]
    reset = [frame for frame in frames if frame["op"] == "reset"]
    assert reset and reset[0]["recovered"] is False and reset[0]["epoch"] == second["epoch"], frames
    assert frames[-1]["offset"] == 1 and frames[-1]["epoch"] == second["epoch"]


def test_a_position_in_a_restored_store_is_not_recovered(make_herald, tmp_path):
    """A backup restored after more events were written: offsets after it are written again,
    so a client holding a position from before the restore must not take them as seen."""
    herald = make_herald()
    api = herald.client()
    publish(api, "orders", 3)
    backup = tmp_path / "backup.sqlite"
    with sqlite3.connect(f"{herald.data_dir}/herald.sqlite") as source, sqlite3.connect(backup) as target:
        source.backup(target)  # an online backup, as docs/operations.md says
    later = publish(api, "orders", 2)
    held = {"since": later[-1]["offset"], "epoch": later[-1]["epoch"]}  # (E, 5)
    assert herald.terminate() == 0
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / "data0" / f"herald.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, f"{herald.data_dir}/herald.sqlite")
    herald.start()
    api = herald.client()
    rewritten = publish(api, "orders", 2)
    assert [event["offset"] for event in rewritten] == [4, 5]
    answer = api.get("/api/v1/channels/orders/events", params=held).json()
    assert answer["recovered"] is False, answer
    assert [event["offset"] for event in answer["events"]] == [1, 2, 3, 4, 5]
    assert "new epoch" in "".join(herald.output)


def test_a_clean_restart_keeps_every_position(make_herald):
    herald = make_herald()
    api = herald.client()
    events = publish(api, "orders", 3)
    assert herald.terminate() == 0
    herald.start()
    answer = herald.client().get("/api/v1/channels/orders/events",
                                 params={"since": 3, "epoch": events[0]["epoch"]}).json()
    assert answer["recovered"] is True and answer["epoch"] == events[0]["epoch"]


def test_kill_9_on_the_same_boot_keeps_every_position(make_herald):
    """kill -9 loses no commit (the OS holds them), so positions stay valid."""
    herald = make_herald()
    api = herald.client()
    events = publish(api, "orders", 3)
    herald.kill9()
    herald.start()
    answer = herald.client().get("/api/v1/channels/orders/events",
                                 params={"since": 3, "epoch": events[0]["epoch"]}).json()
    assert answer["recovered"] is True and answer["epoch"] == events[0]["epoch"]
