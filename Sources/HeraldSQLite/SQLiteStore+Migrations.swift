internal import GRDB

extension SQLiteStore {
    /// Versioned schema migrations, applied in order at start-up; a migration is never edited
    /// once released, only followed by a new one.
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: checks, channels, events, idempotency keys") { db in
            try db.execute(
                sql: """
                    CREATE TABLE checks (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        kind TEXT NOT NULL,
                        params TEXT NOT NULL,
                        state TEXT NOT NULL,
                        result TEXT,
                        error TEXT,
                        version INTEGER NOT NULL,
                        created_at INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL,
                        completed_at INTEGER,
                        callback_url TEXT,
                        callback_secret TEXT
                    );
                    CREATE INDEX checks_processing ON checks(seq) WHERE state = 'processing';
                    CREATE INDEX checks_completed ON checks(completed_at) WHERE state != 'processing';
                    CREATE INDEX checks_state_kind ON checks(state, kind, seq);
                    CREATE TABLE idempotency_keys (
                        key TEXT PRIMARY KEY,
                        fingerprint TEXT NOT NULL,
                        check_id TEXT NOT NULL,
                        created_at INTEGER NOT NULL
                    ) WITHOUT ROWID;
                    CREATE TABLE channels (
                        name TEXT PRIMARY KEY,
                        epoch TEXT NOT NULL,
                        last_offset INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL
                    ) WITHOUT ROWID;
                    CREATE TABLE events (
                        channel TEXT NOT NULL REFERENCES channels(name) ON DELETE CASCADE,
                        offset INTEGER NOT NULL,
                        type TEXT NOT NULL,
                        time INTEGER NOT NULL,
                        data TEXT NOT NULL,
                        PRIMARY KEY (channel, offset)
                    ) WITHOUT ROWID;
                    CREATE INDEX events_time ON events(time);
                    """
            )
        }
        return migrator
    }
}
