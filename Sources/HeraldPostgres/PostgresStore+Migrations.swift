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
        ),
        (
            "v2: webhook subscriptions, the delivery queue and the webhook event log",
            [
                """
                CREATE TABLE subscriptions (
                    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    id text NOT NULL UNIQUE,
                    target_url text NOT NULL,
                    target text NOT NULL,
                    event text NOT NULL,
                    secret text NOT NULL,
                    previous_secret text,
                    previous_secret_until bigint,
                    created_at bigint NOT NULL,
                    updated_at bigint NOT NULL,
                    disabled_at bigint,
                    disabled_reason text,
                    failing_since bigint,
                    cursor bigint NOT NULL,
                    fan_out_at bigint NOT NULL DEFAULT 0
                )
                """,
                "CREATE INDEX subscriptions_fan_out ON subscriptions (fan_out_at, cursor) WHERE disabled_at IS NULL",
                "CREATE INDEX subscriptions_target ON subscriptions (target)",
                """
                CREATE TABLE deliveries (
                    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    id text NOT NULL UNIQUE,
                    subscription_id text,
                    check_id text,
                    target_url text NOT NULL,
                    target text NOT NULL,
                    secret text NOT NULL,
                    event_type text NOT NULL,
                    event_time bigint NOT NULL,
                    payload text NOT NULL,
                    state text NOT NULL,
                    attempts integer NOT NULL DEFAULT 0,
                    next_attempt_at bigint,
                    created_at bigint NOT NULL,
                    updated_at bigint NOT NULL,
                    lease bigint NOT NULL DEFAULT 0,
                    leased_until bigint
                )
                """,
                "CREATE INDEX deliveries_due ON deliveries (next_attempt_at, seq) WHERE state = 'pending'",
                "CREATE INDEX deliveries_target ON deliveries (target, next_attempt_at) WHERE state = 'pending'",
                "CREATE INDEX deliveries_subscription ON deliveries (subscription_id, seq)",
                "CREATE INDEX deliveries_check ON deliveries (check_id, seq)",
                "CREATE INDEX deliveries_waiting ON deliveries (subscription_id, event_time) WHERE state = 'pending'",
                "CREATE INDEX deliveries_ended ON deliveries (updated_at) WHERE state <> 'pending'",
                """
                CREATE TABLE delivery_attempts (
                    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    delivery_id text NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
                    at bigint NOT NULL,
                    status_code integer,
                    duration_ms bigint NOT NULL,
                    error text,
                    snippet text
                )
                """,
                "CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, at)",
                "CREATE TABLE parked_targets (target text PRIMARY KEY, until bigint NOT NULL)",
                // The log's entries are numbered by `webhook_log.head`, a row every writer of an
                // entry locks until it commits: entries commit in the order of their numbers, so
                // a cursor never passes an entry that commits later.
                """
                CREATE TABLE webhook_events (
                    seq bigint PRIMARY KEY,
                    check_id text,
                    type text NOT NULL,
                    time bigint NOT NULL,
                    payload text NOT NULL
                )
                """,
                // Subscription.pattern(_:matches:) in SQL: `*`, a type, or a prefix `check.*`.
                """
                CREATE FUNCTION herald_event_matches(pattern text, type text) RETURNS boolean
                LANGUAGE sql IMMUTABLE AS
                $$ SELECT pattern = '*' OR pattern = type OR (right(pattern, 2) = '.*' AND starts_with(type, left(pattern, -1))) $$
                """,
                "CREATE TABLE webhook_log (only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), head bigint NOT NULL)",
                "INSERT INTO webhook_log (head) VALUES (0)",
            ]
        ),
        (
            "v3: nodes, the node that runs each processing check, leases",
            [
                """
                CREATE TABLE nodes (
                    id text PRIMARY KEY,
                    started_at bigint NOT NULL,
                    heartbeat_at bigint NOT NULL,
                    version text NOT NULL,
                    address text NOT NULL
                )
                """,
                "ALTER TABLE checks ADD COLUMN node text",
                "CREATE INDEX checks_node ON checks (node, seq) WHERE state = 'processing'",
                "CREATE TABLE leases (name text PRIMARY KEY, node text NOT NULL, until bigint NOT NULL)",
            ]
        ),
    ]
}
