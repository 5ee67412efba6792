extension PostgresStore {
    /// Versioned schema migrations, applied in order by ``migrate()``; a migration is never
    /// edited once released, only followed by a new one. Times are milliseconds since 1970, as
    /// in the SQLite store.
    static let migrations: [(name: String, statements: [String])] = [
        (
            "v1: checks, channels, events, idempotency keys",
            [
                """
                CREATE TABLE checks (
                    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    id text NOT NULL UNIQUE,
                    kind text NOT NULL,
                    params text NOT NULL,
                    state text NOT NULL,
                    result text,
                    error text,
                    version bigint NOT NULL,
                    created_at bigint NOT NULL,
                    updated_at bigint NOT NULL,
                    completed_at bigint,
                    callback_url text,
                    callback_secret text,
                    callback_events text NOT NULL DEFAULT 'terminal',
                    callback_stopped boolean NOT NULL DEFAULT false,
                    owner_subject text,
                    cancel_digest text
                )
                """,
                "CREATE INDEX checks_processing ON checks (seq) WHERE state = 'processing'",
                "CREATE INDEX checks_completed ON checks (completed_at) WHERE state <> 'processing'",
                "CREATE INDEX checks_state_kind ON checks (state, kind, seq)",
                """
                CREATE TABLE idempotency_keys (
                    key text PRIMARY KEY,
                    fingerprint text NOT NULL,
                    check_id text NOT NULL,
                    created_at bigint NOT NULL
                )
                """,
                "CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at)",
                """
                CREATE TABLE channels (
                    name text PRIMARY KEY,
                    epoch text NOT NULL,
                    last_offset bigint NOT NULL,
                    updated_at bigint NOT NULL
                )
                """,
                "CREATE INDEX channels_expiring ON channels (updated_at) WHERE name NOT LIKE 'check:%'",
                """
                CREATE TABLE events (
                    channel text NOT NULL REFERENCES channels (name) ON DELETE CASCADE,
                    "offset" bigint NOT NULL,
                    type text NOT NULL,
                    time bigint NOT NULL,
                    data text NOT NULL,
                    PRIMARY KEY (channel, "offset")
                )
                """,
                "CREATE INDEX events_expiring ON events (time) WHERE channel NOT LIKE 'check:%'",
            ]
        )
    ]
}
