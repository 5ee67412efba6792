"""The embedded store: WAL mode, versioned migrations, and reads that never wait on a write."""

import pathlib
import sqlite3
import time

from conftest import AUTH, create


def test_the_store_is_sqlite_in_wal_mode_with_versioned_migrations(herald):
    path = pathlib.Path(herald.data_dir) / "herald.sqlite"
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        migrations = [row[0] for row in db.execute("SELECT identifier FROM grdb_migrations")]
        assert migrations and migrations[0].startswith("v1")


def test_reads_are_served_while_a_long_write_holds_the_database(herald):
    with herald.client() as api:
        check = create(api, {"kind": "external"}).json()
        api.post("/api/v1/channels/busy/events", json={"type": "t", "data": 1}, headers=AUTH)
        writer = sqlite3.connect(pathlib.Path(herald.data_dir) / "herald.sqlite", timeout=1, isolation_level=None)
        # EXCLUSIVE locks readers out under a rollback journal; under WAL readers still get in.
        writer.execute("BEGIN EXCLUSIVE")
        writer.execute("INSERT INTO channels (name, epoch, last_offset, updated_at) VALUES ('held', 'x', 0, 0)")
        try:
            started = time.monotonic()
            assert api.get(f"/api/v1/checks/{check['id']}").json()["state"] == "processing"
            assert api.get("/api/v1/channels/busy/events", params={"since": 0}).json()["events"][0]["data"] == 1
            assert api.get("/api/v1/checks", headers=AUTH).status_code == 200
            # Herald's writer would wait up to its 5 s busy timeout; its readers did not wait at all.
            assert time.monotonic() - started < 4
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        # Once the foreign writer is gone, writes go through again.
        assert api.post("/api/v1/channels/busy/events", json={"type": "t", "data": 2}, headers=AUTH).status_code == 201
