internal import GRDB
package import HeraldCore
package import HeraldStore

/// The outbox: what an event makes of webhooks, in the event's own transaction, and how a
/// subscription reads the webhook event log (the fan-out) and is held to its lag cap.
extension SQLiteStore {
    // MARK: The outbox

    /// Records, inside the transaction that appends `event`, what webhooks it causes: a
    /// delivery row for the check's callback (its terminal event, or all with
    /// `callback_events: all`), and one entry in the webhook event log when any subscription
    /// matches it. A subscription's deliveries are made from the log by ``fanOut(now:window:healthy:limit:_:)``,
    /// so an event costs one row however many subscriptions it matches.
    /// - Returns: whether anything was queued (a callback's delivery, or the event logged).
    static func enqueueDeliveries(for event: Event, of check: Check?, _ db: Database) throws -> Bool {
        // Runs for every event written: the prepared statements are kept, not compiled each time.
        // The log holds only what some active subscription will read.
        let subscribed =
            try Bool.fetchOne(
                try db.cachedStatement(
                    sql: """
                        SELECT EXISTS (SELECT 1 FROM subscriptions
                                       WHERE disabled_at IS NULL AND herald_event_matches(event, ?))
                        """
                ),
                arguments: [event.type]
            ) ?? false
        var callback: (check: Check, url: String, secret: String)?
        if let check, let url = check.spec.callbackURL, let secret = check.spec.callbackSecret,
            check.spec.calls(check.state)
        {
            callback = (check, url, secret)
        }
        guard subscribed || callback != nil else { return false }
        let payload = Delivery.payload(of: event)
        if let (check, url, secret) = callback {
            let target = Delivery.target(of: url)
            // A parked target's new deliveries join its backlog instead of being claimed only
            // to be held.
            let parked = try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT until FROM parked_targets WHERE target = ?"),
                arguments: [target]
            )
            try insertDelivery(
                subscription: nil,
                check: check.id.rawValue,
                url: url,
                target: target,
                secret: secret,
                type: event.type,
                eventTime: event.time,
                payload: payload,
                at: event.time,
                due: Timestamp(millisecondsSince1970: max(event.time.millisecondsSince1970, parked ?? 0)),
                db
            )
        }
        guard subscribed else { return true }
        try db.cachedStatement(sql: "INSERT INTO webhook_events (check_id, type, time, payload) VALUES (?, ?, ?, ?)")
            .execute(arguments: [check?.id.rawValue, event.type, event.time.millisecondsSince1970, payload])
        return true
    }

    /// `herald_event_matches(pattern, type)`: ``Subscription/pattern(_:matches:)`` in SQL, so the
    /// fan-out reads from the log exactly the events it makes deliveries of.
    static let eventMatches = DatabaseFunction("herald_event_matches", argumentCount: 2, pure: true) { arguments in
        guard let pattern = String.fromDatabaseValue(arguments[0]), let type = String.fromDatabaseValue(arguments[1])
        else { return false }
        return Subscription.pattern(pattern, matches: type)
    }

    /// Makes deliveries from the webhook event log: for each active subscription behind the
    /// log's head whose target is not parked and that has fewer than `window` deliveries not
    /// yet attempted, the next matching events become delivery rows and its cursor moves past
    /// them, in the caller's transaction. A parked or backed-up subscription costs nothing per
    /// event: its backlog is the log after its cursor, and the fan-out skips it (`fan_out_at`)
    /// until its target is unparked or one of its deliveries is attempted. A target not among
    /// the `healthy` ones is sent one delivery at a time, so its subscriptions get a window of
    /// one. At most `limit` rows in one call.
    static func fanOut(
        now: Timestamp,
        window healthyWindow: Int,
        healthy: Set<String>,
        limit: Int,
        _ db: Database
    )
        throws
    {
        guard let head = try logHead(db) else { return }
        var budget = limit
        let skip = try db.cachedStatement(sql: "UPDATE subscriptions SET fan_out_at = ? WHERE id = ?")
        // Should an attempt's record never come, it is looked at again after this long.
        let skipUntil = now.adding(milliseconds: 60_000).millisecondsSince1970
        for subscription in try fanOutCandidates(head: head, now: now, window: nil, limit: -1, db) where budget > 0 {
            let window = subscription.window(healthy: healthy, healthyWindow: healthyWindow)
            guard subscription.fresh < window else {
                try skip.execute(arguments: [skipUntil, subscription.id])
                continue
            }
            let room = min(window - subscription.fresh, budget)
            let events = try Row.fetchAll(
                try db.cachedStatement(
                    sql: """
                        SELECT * FROM webhook_events WHERE seq > ? AND herald_event_matches(?, type)
                        ORDER BY seq LIMIT ?
                        """
                ),
                arguments: [subscription.cursor, subscription.event, room]
            )
            for event in events {
                try insertDelivery(
                    subscription: subscription.id,
                    check: event["check_id"],
                    url: subscription.targetURL,
                    target: subscription.target,
                    secret: subscription.secret,
                    type: event["type"],
                    eventTime: Timestamp(millisecondsSince1970: event["time"]),
                    payload: event["payload"],
                    at: now,
                    db
                )
            }
            budget -= events.count
            // Read up to the head, unless the room ran out first.
            let cursor: Int64 = events.count == room ? events.last?["seq"] ?? head : head
            try db.cachedStatement(sql: "UPDATE subscriptions SET cursor = ? WHERE id = ?")
                .execute(arguments: [cursor, subscription.id])
            if subscription.fresh + events.count >= window {
                try skip.execute(arguments: [skipUntil, subscription.id])
            }
        }
    }

    /// The last entry of the webhook event log, if it has any.
    static func logHead(_ db: Database) throws -> Int64? {
        try Int64.fetchOne(try db.cachedStatement(sql: "SELECT MAX(seq) FROM webhook_events"))
    }

    /// The subscriptions behind the log's head, not skipped for now and not parked, oldest
    /// cursor first, at most `limit` (-1: all); only those with fewer than `window` deliveries
    /// not yet attempted if `window` is given.
    static func fanOutCandidates(
        head: Int64,
        now: Timestamp,
        window: Int?,
        limit: Int,
        _ db: Database
    ) throws -> [FanOutCandidate] {
        try Row.fetchAll(
            try db.cachedStatement(
                sql: """
                    SELECT * FROM
                      (SELECT id, target_url, target, event, secret, cursor,
                              (SELECT COUNT(*) FROM deliveries WHERE subscription_id = subscriptions.id
                                 AND state = 'pending' AND attempts = 0) AS fresh
                       FROM subscriptions INDEXED BY subscriptions_fan_out
                       WHERE disabled_at IS NULL AND fan_out_at <= ?2 AND cursor < ?1 AND NOT EXISTS
                             (SELECT 1 FROM parked_targets
                              WHERE parked_targets.target = subscriptions.target AND until > ?2)
                       ORDER BY fan_out_at, cursor)
                    WHERE ?3 IS NULL OR fresh < ?3 LIMIT ?4
                    """
            ),
            arguments: [head, now.millisecondsSince1970, window, limit]
        ).map { row in
            FanOutCandidate(
                id: row["id"],
                targetURL: row["target_url"],
                target: row["target"],
                event: row["event"],
                secret: row["secret"],
                cursor: row["cursor"],
                fresh: row["fresh"]
            )
        }
    }

    /// One pending delivery, written at `time`, due at `due` (`time` when not given). (A
    /// subscription's delivery is signed with the subscription's secrets when it is sent;
    /// `secret` is what a check's callback uses.)
    static func insertDelivery(
        subscription: String?,
        check: String?,
        url: String,
        target: String? = nil,
        secret: String,
        type: String,
        eventTime: Timestamp,
        payload: String,
        at time: Timestamp,
        due: Timestamp? = nil,
        _ db: Database
    ) throws {
        try db.cachedStatement(
            sql: """
                INSERT INTO deliveries (id, subscription_id, check_id, target_url, target, secret, event_type,
                                        event_time, payload, state, attempts, next_attempt_at, created_at, updated_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?)
                """
        ).execute(arguments: [
            Delivery.newID(at: time), subscription, check, url, target ?? Delivery.target(of: url), secret,
            type, eventTime.millisecondsSince1970, payload, (due ?? time).millisecondsSince1970,
            time.millisecondsSince1970, time.millisecondsSince1970,
        ])
    }

    // MARK: The lag cap

    package func disableLagging(beyond cap: LagCap, at now: Timestamp) async throws -> [LaggingSubscription] {
        try await pool.write { db in
            let head = try Self.logHead(db) ?? 0
            var disabled: [LaggingSubscription] = []
            let active = try Row.fetchAll(db, sql: "SELECT id, cursor FROM subscriptions WHERE disabled_at IS NULL")
            for row in active {
                let id: String = row["id"]
                let lag = try Self.lag(of: id, cursor: row["cursor"], head: head, db)
                guard let reason = cap.reason(events: lag.events, oldest: lag.oldest, at: now) else { continue }
                try db.execute(
                    sql: "UPDATE subscriptions SET disabled_at = ?, disabled_reason = ? WHERE id = ?",
                    arguments: [now.millisecondsSince1970, reason.rawValue, id]
                )
                try Self.failPending(subscription: id, at: now.millisecondsSince1970, db)
                disabled.append(LaggingSubscription(id: id, reason: reason, events: lag.events, oldest: lag.oldest))
            }
            return disabled
        }
    }

    /// What waits for a subscription: the log entries past its cursor (the log keeps every entry
    /// past the lowest active cursor, so they run without a gap from the first one to the head)
    /// and its pending deliveries, and the time of the oldest of them.
    private static func lag(
        of id: String,
        cursor: Int64,
        head: Int64,
        _ db: Database
    ) throws -> (events: Int, oldest: Timestamp?) {
        let pending = try Row.fetchOne(
            try db.cachedStatement(
                sql: """
                    SELECT COUNT(*) AS count, MIN(event_time) AS oldest FROM deliveries INDEXED BY deliveries_waiting
                    WHERE subscription_id = ? AND state = 'pending'
                    """
            ),
            arguments: [id]
        )
        // From the first entry past the cursor to the head: the entries above any active
        // cursor are all kept, whatever the cursor's own value (the log may have been emptied
        // past it).
        let firstUnread = try Row.fetchOne(
            try db.cachedStatement(sql: "SELECT seq, time FROM webhook_events WHERE seq > ? ORDER BY seq LIMIT 1"),
            arguments: [cursor]
        )
        let unread = firstUnread.map { head - ($0["seq"] as Int64) + 1 } ?? 0
        let oldest = [firstUnread?["time"] as Int64?, pending?["oldest"] as Int64?].compactMap { $0 }.min()
        let waiting = Int(clamping: unread) + (pending?["count"] as Int? ?? 0)
        return (waiting, oldest.map(Timestamp.init(millisecondsSince1970:)))
    }
}
