package import HeraldCore
package import HeraldStore
internal import PostgresNIO

/// The outbox, as in the SQLite store: what an event makes of webhooks is written in the
/// event's own transaction (a check callback's delivery row; one entry of the webhook event log
/// when an active subscription matches), and subscriptions read the log through their cursors.
/// Across nodes, the fan-out of a subscription is done by whichever claim locks its row first
/// (`FOR UPDATE SKIP LOCKED`), so no event becomes two deliveries.
extension PostgresStore {
    /// - Parameter subscribed: whether an active subscription matches the event (``append``
    ///   says so in the statement that wrote it).
    static func enqueueDeliveries(
        for event: Event,
        of check: Check?,
        subscribed: Bool,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        let payload = Delivery.payload(of: event)
        if let check, let url = check.spec.callbackURL, let secret = check.spec.callbackSecret,
            check.spec.calls(check.state)
        {
            // A parked target's new deliveries join its backlog, due when it is.
            let target = Delivery.target(of: url)
            try await insertDelivery(
                NewDelivery(
                    subscription: nil,
                    check: check.id.rawValue,
                    url: url,
                    target: target,
                    secret: secret,
                    type: event.type,
                    eventTime: event.time,
                    payload: payload
                ),
                at: event.time,
                dueAfterParking: true,
                connection,
                logger
            )
        }
        guard subscribed else { return }
        // The log's row stays locked until commit, so entries commit in the order of their numbers.
        try await connection.query(
            """
            WITH next AS (UPDATE webhook_log SET head = head + 1 RETURNING head)
            INSERT INTO webhook_events (seq, check_id, type, time, payload)
            SELECT head, \(check?.id.rawValue), \(event.type), \(event.time.millisecondsSince1970), \(payload) FROM next
            """,
            logger: logger
        )
    }

    struct NewDelivery {
        var subscription: String?
        var check: String?
        var url: String
        var target: String
        var secret: String
        var type: String
        var eventTime: Timestamp
        var payload: String
    }

    /// One pending delivery written at `time`, due then (or when its target's parking ends).
    static func insertDelivery(
        _ delivery: NewDelivery,
        at time: Timestamp,
        dueAfterParking: Bool = false,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        let now = time.millisecondsSince1970
        try await connection.query(
            """
            INSERT INTO deliveries (id, subscription_id, check_id, target_url, target, secret, event_type, event_time,
                                    payload, state, attempts, next_attempt_at, created_at, updated_at)
            VALUES (\(Delivery.newID(at: time)), \(delivery.subscription), \(delivery.check), \(delivery.url),
                    \(delivery.target), \(delivery.secret), \(delivery.type), \(delivery.eventTime.millisecondsSince1970),
                    \(delivery.payload), 'pending', 0,
                    GREATEST(\(now), CASE WHEN \(dueAfterParking) THEN
                      (SELECT until FROM parked_targets WHERE target = \(delivery.target)) END),
                    \(now), \(now))
            """,
            logger: logger
        )
    }

    /// Makes deliveries from the webhook event log (see `SQLiteStore.fanOut`): each active
    /// subscription behind the head, not skipped for now and not parked, gets rows for the next
    /// events it matches, up to its window of deliveries not yet attempted (one for a target
    /// not among the `healthy`), and its cursor moves past them. At most `limit` rows.
    static func fanOut(
        now: Timestamp,
        window healthyWindow: Int,
        healthy: Set<String>,
        limit: Int,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        let head = try await logHead(connection, logger)
        guard head > 0 else { return }
        let skipUntil = now.adding(milliseconds: 60_000).millisecondsSince1970
        var budget = limit
        for candidate in try await fanOutCandidates(
            head: head,
            now: now,
            window: nil,
            limit: nil,
            lock: true,
            connection,
            logger
        )
        where budget > 0 {
            let window = candidate.window(healthy: healthy, healthyWindow: healthyWindow)
            guard candidate.fresh < window else {
                try await connection.query(
                    "UPDATE subscriptions SET fan_out_at = \(skipUntil) WHERE id = \(candidate.id)",
                    logger: logger
                )
                continue
            }
            let room = min(window - candidate.fresh, budget)
            let rows = try await connection.query(
                """
                SELECT seq, check_id, type, time, payload FROM webhook_events
                WHERE seq > \(candidate.cursor) AND seq <= \(head) AND herald_event_matches(\(candidate.event), type)
                ORDER BY seq LIMIT \(room)
                """,
                logger: logger
            )
            var events: [(Int64, String?, String, Int64, String)] = []
            for try await row in rows.decode((Int64, String?, String, Int64, String).self) { events.append(row) }
            for (_, check, type, time, payload) in events {
                try await insertDelivery(
                    NewDelivery(
                        subscription: candidate.id,
                        check: check,
                        url: candidate.targetURL,
                        target: candidate.target,
                        secret: candidate.secret,
                        type: type,
                        eventTime: Timestamp(millisecondsSince1970: time),
                        payload: payload
                    ),
                    at: now,
                    connection,
                    logger
                )
            }
            budget -= events.count
            // Read up to the head, unless the room ran out first.
            let cursor = events.count == room ? events.last?.0 ?? head : head
            let full = candidate.fresh + events.count >= window
            try await connection.query(
                """
                UPDATE subscriptions SET cursor = \(cursor),
                  fan_out_at = CASE WHEN \(full) THEN \(skipUntil) ELSE fan_out_at END
                WHERE id = \(candidate.id)
                """,
                logger: logger
            )
        }
    }

    /// The number of the log's last committed entry (0 when it never had one).
    static func logHead(_ connection: PostgresConnection, _ logger: Logger) async throws -> Int64 {
        var head: Int64 = 0
        for try await value in try await connection.query("SELECT head FROM webhook_log", logger: logger)
            .decode(Int64.self)
        {
            head = value
        }
        return head
    }

    /// The subscriptions behind the head, not skipped for now and not parked, oldest cursor
    /// first; with `window`, only those with fewer deliveries not yet attempted. `lock`: their
    /// rows are locked for the caller's transaction, and those another claim holds are passed.
    static func fanOutCandidates(
        head: Int64,
        now: Timestamp,
        window: Int?,
        limit: Int?,
        lock: Bool,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> [FanOutCandidate] {
        let rows = try await connection.query(
            """
            SELECT id, target_url, target, event, secret, cursor,
                   (SELECT COUNT(*) FROM deliveries WHERE subscription_id = subscriptions.id
                      AND state = 'pending' AND attempts = 0)
            FROM subscriptions
            WHERE disabled_at IS NULL AND fan_out_at <= \(now.millisecondsSince1970) AND cursor < \(head)
              AND NOT EXISTS (SELECT 1 FROM parked_targets
                              WHERE parked_targets.target = subscriptions.target AND until > \(now.millisecondsSince1970))
              AND (\(window)::bigint IS NULL OR (SELECT COUNT(*) FROM deliveries WHERE subscription_id = subscriptions.id
                      AND state = 'pending' AND attempts = 0) < \(window))
            ORDER BY fan_out_at, cursor LIMIT \(limit)
            \(unescaped: lock ? "FOR UPDATE SKIP LOCKED" : "")
            """,
            logger: logger
        )
        var candidates: [FanOutCandidate] = []
        for try await row in rows.decode((String, String, String, String, String, Int64, Int64).self) {
            candidates.append(
                FanOutCandidate(
                    id: row.0,
                    targetURL: row.1,
                    target: row.2,
                    event: row.3,
                    secret: row.4,
                    cursor: row.5,
                    fresh: Int(row.6)
                )
            )
        }
        return candidates
    }

    package func disableLagging(beyond cap: LagCap, at now: Timestamp) async throws -> [LaggingSubscription] {
        try await transaction { connection in
            let head = try await Self.logHead(connection, self.logger)
            let rows = try await connection.query(
                """
                SELECT s.id,
                       (SELECT COUNT(*) FROM deliveries WHERE subscription_id = s.id AND state = 'pending'),
                       (SELECT MIN(event_time) FROM deliveries WHERE subscription_id = s.id AND state = 'pending'),
                       first.seq, first.time
                FROM subscriptions s
                LEFT JOIN LATERAL (SELECT seq, time FROM webhook_events WHERE seq > s.cursor ORDER BY seq LIMIT 1) first
                  ON true
                WHERE s.disabled_at IS NULL
                FOR UPDATE OF s SKIP LOCKED
                """,
                logger: self.logger
            )
            var disabled: [LaggingSubscription] = []
            for try await (id, pending, oldestPending, firstUnread, firstTime) in rows.decode(
                (String, Int64, Int64?, Int64?, Int64?).self
            ) {
                // From the first entry past the cursor to the head: the log keeps every entry
                // above the lowest active cursor.
                let unread = firstUnread.map { head - $0 + 1 } ?? 0
                let oldest = [firstTime, oldestPending].compactMap { $0 }.min().map(
                    Timestamp.init(millisecondsSince1970:)
                )
                let events = Int(clamping: unread + pending)
                guard let reason = cap.reason(events: events, oldest: oldest, at: now) else { continue }
                disabled.append(LaggingSubscription(id: id, reason: reason, events: events, oldest: oldest))
            }
            for subscription in disabled {
                try await connection.query(
                    """
                    UPDATE subscriptions SET disabled_at = \(now.millisecondsSince1970),
                      disabled_reason = \(subscription.reason.rawValue)
                    WHERE id = \(subscription.id)
                    """,
                    logger: self.logger
                )
                try await Self.failPending(subscription: subscription.id, at: now, connection, self.logger)
            }
            return disabled
        }
    }
}
