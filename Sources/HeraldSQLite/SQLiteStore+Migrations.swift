internal import GRDB
internal import HeraldStore

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
        migrator.registerMigration("v2: webhook subscriptions, delivery outbox and log") { db in
            try db.execute(
                sql: """
                    CREATE TABLE subscriptions (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        target_url TEXT NOT NULL,
                        event TEXT NOT NULL,
                        secret TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL,
                        disabled_at INTEGER,
                        failing_since INTEGER
                    );
                    CREATE TABLE deliveries (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        id TEXT NOT NULL UNIQUE,
                        subscription_id TEXT,
                        check_id TEXT,
                        target_url TEXT NOT NULL,
                        secret TEXT NOT NULL,
                        event_type TEXT NOT NULL,
                        event_time INTEGER NOT NULL,
                        payload TEXT NOT NULL,
                        state TEXT NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        next_attempt_at INTEGER,
                        created_at INTEGER NOT NULL,
                        updated_at INTEGER NOT NULL
                    );
                    CREATE INDEX deliveries_due ON deliveries(next_attempt_at) WHERE state = 'pending';
                    CREATE INDEX deliveries_subscription ON deliveries(subscription_id, seq);
                    CREATE INDEX deliveries_check ON deliveries(check_id, seq);
                    CREATE TABLE delivery_attempts (
                        delivery_id TEXT NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
                        at INTEGER NOT NULL,
                        status_code INTEGER,
                        duration_ms INTEGER NOT NULL,
                        error TEXT,
                        snippet TEXT
                    );
                    CREATE INDEX delivery_attempts_delivery ON delivery_attempts(delivery_id, at);
                    """
            )
        }
        migrator.registerMigration("v3: secret rotation, callbacks for every event, deliveries by target") { db in
            try db.execute(
                sql: """
                    ALTER TABLE subscriptions ADD COLUMN previous_secret TEXT;
                    ALTER TABLE subscriptions ADD COLUMN previous_secret_until INTEGER;
                    ALTER TABLE checks ADD COLUMN callback_events TEXT NOT NULL DEFAULT 'terminal';
                    ALTER TABLE checks ADD COLUMN callback_stopped INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE deliveries ADD COLUMN target TEXT NOT NULL DEFAULT '';
                    CREATE INDEX deliveries_target ON deliveries(target, next_attempt_at) WHERE state = 'pending';
                    ALTER TABLE subscriptions ADD COLUMN target TEXT NOT NULL DEFAULT '';
                    CREATE TABLE parked_targets (
                        target TEXT PRIMARY KEY,
                        until INTEGER NOT NULL
                    ) WITHOUT ROWID;
                    """
            )
            for table in ["deliveries", "subscriptions"] {
                for row in try Row.fetchAll(db, sql: "SELECT id, target_url FROM \(table)") {
                    try db.execute(
                        sql: "UPDATE \(table) SET target = ? WHERE id = ?",
                        arguments: [Delivery.target(of: row["target_url"]), row["id"] as String]
                    )
                }
            }
        }
        migrator.registerMigration("v4: a webhook event log read through a cursor per subscription") { db in
            // Existing subscriptions start at the log's head; their queued deliveries stay rows.
            try db.execute(
                sql: """
                    CREATE TABLE webhook_events (
                        seq INTEGER PRIMARY KEY AUTOINCREMENT,
                        check_id TEXT,
                        type TEXT NOT NULL,
                        time INTEGER NOT NULL,
                        payload TEXT NOT NULL
                    );
                    ALTER TABLE subscriptions ADD COLUMN cursor INTEGER NOT NULL DEFAULT 0;
                    CREATE INDEX deliveries_fresh ON deliveries(subscription_id) WHERE state = 'pending' AND attempts = 0;
                    """
            )
        }
        migrator.registerMigration("v5: subscriptions the fan-out skips for a while") { db in
            // `fan_out_at`: when the fan-out looks at the subscription again, sooner if one of
            // its deliveries is attempted or its target is unparked. A thousand subscriptions
            // parked or backed up then cost the fan-out nothing per event.
            try db.execute(
                sql: """
                    ALTER TABLE subscriptions ADD COLUMN fan_out_at INTEGER NOT NULL DEFAULT 0;
                    CREATE INDEX subscriptions_fan_out ON subscriptions(fan_out_at, cursor) WHERE disabled_at IS NULL;
                    CREATE INDEX subscriptions_target ON subscriptions(target);
                    """
            )
        }
        migrator.registerMigration("v6: runs, so positions are never reused after a lost write or a restore") {
            db in
            // One row per key: `generation` (runs started), `running` (1 until a clean stop),
            // `boot_id` (the kernel's boot of the last start). See SQLiteStore+Runs.swift.
            try db.execute(sql: "CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
        }
        migrator.registerMigration("v7: delivery leases, so only the current attempt's outcome counts") { db in
            // `lease` grows at every claim; an attempt's outcome is applied only under the lease
            // it was claimed with. `leased_until`: set while an attempt is in flight.
            try db.execute(sql: "ALTER TABLE deliveries ADD COLUMN lease INTEGER NOT NULL DEFAULT 0")
            try db.execute(sql: "ALTER TABLE deliveries ADD COLUMN leased_until INTEGER")
        }
        migrator.registerMigration("v8: lag caps, and indexes for the janitor and for claims by target") { db in
            // `disabled_reason`: failing, lag_events or lag_age. `deliveries_waiting` counts a
            // subscription's pending deliveries and finds its oldest. The others let the janitor
            // take what is past retention a batch at a time, oldest first, without reading past
            // what it keeps (a kept check's old events and channel are not in them).
            try db.execute(
                sql: """
                    ALTER TABLE subscriptions ADD COLUMN disabled_reason TEXT;
                    UPDATE subscriptions SET disabled_reason = 'failing' WHERE disabled_at IS NOT NULL;
                    CREATE INDEX deliveries_waiting ON deliveries(subscription_id, event_time) WHERE state = 'pending';
                    CREATE INDEX deliveries_ended ON deliveries(updated_at) WHERE state != 'pending';
                    CREATE INDEX events_expiring ON events(time) WHERE channel NOT LIKE 'check:%';
                    CREATE INDEX channels_expiring ON channels(updated_at) WHERE name NOT LIKE 'check:%';
                    CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
                    """
            )
        }
        migrator.registerMigration("v9: who created a check, and its cancel capability's digest") { db in
            try db.execute(
                sql: """
                    ALTER TABLE checks ADD COLUMN owner_subject TEXT;
                    ALTER TABLE checks ADD COLUMN cancel_digest TEXT;
                    """
            )
        }
        return migrator
    }
}
