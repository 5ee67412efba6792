internal import GRDB
package import HeraldCore
package import HeraldStore

extension SQLiteStore {
    // MARK: The outbox

    /// Records, inside the transaction that appends `event`, what webhooks it causes: a
    /// delivery row for the check's callback (its terminal event, or all with
    /// `callback_events: all`), and one entry in the webhook event log when any subscription
    /// is active. A subscription's deliveries are made from the log by ``fanOut(now:window:limit:_:)``,
    /// so an event costs one row however many subscriptions it matches.
    static func enqueueDeliveries(for event: Event, of check: Check?, _ db: Database) throws {
        // Runs for every event written: the prepared statements are kept, not compiled each time.
        let subscribed =
            try Bool.fetchOne(
                try db.cachedStatement(sql: "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE disabled_at IS NULL)")
            ) ?? false
        var callback: (check: Check, url: String, secret: String)?
        if let check, let url = check.spec.callbackURL, let secret = check.spec.callbackSecret,
            check.spec.calls(check.state)
        {
            callback = (check, url, secret)
        }
        guard subscribed || callback != nil else { return }
        let payload = Self.payload(of: event)
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
        guard subscribed else { return }
        try db.cachedStatement(sql: "INSERT INTO webhook_events (check_id, type, time, payload) VALUES (?, ?, ?, ?)")
            .execute(arguments: [check?.id.rawValue, event.type, event.time.millisecondsSince1970, payload])
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
            let window = healthy.contains(subscription.target) ? healthyWindow : 1
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
    private static func logHead(_ db: Database) throws -> Int64? {
        try Int64.fetchOne(try db.cachedStatement(sql: "SELECT MAX(seq) FROM webhook_events"))
    }

    private struct FanOutCandidate {
        var id, targetURL, target, event, secret: String
        var cursor: Int64
        /// Its deliveries not yet attempted.
        var fresh: Int
    }

    /// The subscriptions behind the log's head, not skipped for now and not parked, oldest
    /// cursor first, at most `limit` (-1: all); only those with fewer than `window` deliveries
    /// not yet attempted if `window` is given.
    private static func fanOutCandidates(
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
    private static func insertDelivery(
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
            "msg_" + timeOrderedToken(at: time), subscription, check, url, target ?? Delivery.target(of: url), secret,
            type, eventTime.millisecondsSince1970, payload, (due ?? time).millisecondsSince1970,
            time.millisecondsSince1970, time.millisecondsSince1970,
        ])
    }

    /// The body of a delivery, per Standard Webhooks: `{"type", "timestamp", "data"}`, where
    /// `data` is the event as every other transport carries it.
    static func payload(of event: Event) -> String {
        var writer = JSONWriter()
        writer.string("type", event.type)
        writer.string("timestamp", event.time.rfc3339)
        writer.raw("data", event.json)
        return writer.result
    }

    // MARK: Subscriptions

    package func createSubscription(_ subscription: Subscription) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO subscriptions (id, target_url, target, event, secret, created_at, updated_at, cursor)
                    VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) FROM webhook_events))
                    """,
                arguments: [
                    subscription.id, subscription.targetURL, Delivery.target(of: subscription.targetURL),
                    subscription.event, subscription.secret,
                    subscription.createdAt.millisecondsSince1970, subscription.updatedAt.millisecondsSince1970,
                ]
            )
        }
    }

    package func subscription(_ id: String) async throws -> Subscription? {
        try await pool.read { db in try Self.fetchSubscription(id, db) }
    }

    package func subscriptions(limit: Int, cursor: String?) async throws -> (items: [Subscription], next: String?) {
        let after = try Self.sequence(of: cursor)
        return try await pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT * FROM subscriptions WHERE seq > ? ORDER BY seq LIMIT ?",
                arguments: [after, limit + 1]
            )
            let (page, next) = Self.page(rows, limit: limit)
            return (page.map(Self.subscription(from:)), next)
        }
    }

    package func updateSubscription(
        _ id: String,
        targetURL: String,
        event: String,
        secret: String?,
        overlap: Duration,
        at time: Timestamp
    ) async throws -> Subscription? {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE subscriptions SET target_url = ?, target = ?, event = ?, updated_at = ?, disabled_at = NULL,
                                             failing_since = NULL, fan_out_at = 0, cursor = CASE WHEN disabled_at IS NULL THEN cursor
                                             ELSE (SELECT COALESCE(MAX(seq), 0) FROM webhook_events) END
                    WHERE id = ?
                    """,
                arguments: [targetURL, Delivery.target(of: targetURL), event, time.millisecondsSince1970, id]
            )
            try db.execute(
                sql: "UPDATE deliveries SET target_url = ?, target = ? WHERE subscription_id = ? AND state = 'pending'",
                arguments: [targetURL, Delivery.target(of: targetURL), id]
            )
            if let secret { try Self.rotateSecret(id, to: secret, overlap: overlap, at: time, db) }
            return try Self.fetchSubscription(id, db)
        }
    }

    package func rotateSecret(
        _ id: String,
        to secret: String,
        overlap: Duration,
        at time: Timestamp
    ) async throws -> Subscription? {
        try await pool.write { db in
            try Self.rotateSecret(id, to: secret, overlap: overlap, at: time, db)
            return try Self.fetchSubscription(id, db)
        }
    }

    private static func rotateSecret(
        _ id: String,
        to secret: String,
        overlap: Duration,
        at time: Timestamp,
        _ db: Database
    ) throws {
        try db.execute(
            sql: """
                UPDATE subscriptions SET previous_secret = secret, previous_secret_until = ?, secret = ?, updated_at = ?
                WHERE id = ? AND secret != ?
                """,
            arguments: [
                time.adding(milliseconds: overlap.milliseconds).millisecondsSince1970, secret,
                time.millisecondsSince1970, id, secret,
            ]
        )
    }

    private static func fetchSubscription(_ id: String, _ db: Database) throws -> Subscription? {
        try Row.fetchOne(db, sql: "SELECT * FROM subscriptions WHERE id = ?", arguments: [id])
            .map(Self.subscription(from:))
    }

    package func deleteSubscription(_ id: String, at time: Timestamp) async throws -> Bool {
        try await pool.write { db in try Self.deleteSubscription(id, at: time, db) }
    }

    private static func deleteSubscription(_ id: String, at time: Timestamp, _ db: Database) throws -> Bool {
        try db.execute(sql: "DELETE FROM subscriptions WHERE id = ?", arguments: [id])
        let existed = db.changesCount > 0
        try failPending(subscription: id, at: time.millisecondsSince1970, db)
        return existed
    }

    private static func failPending(subscription id: String, at time: Int64, _ db: Database) throws {
        try db.execute(
            sql: """
                UPDATE deliveries SET state = 'failed', next_attempt_at = NULL, updated_at = ?
                WHERE subscription_id = ? AND state = 'pending'
                """,
            arguments: [time, id]
        )
    }

    // MARK: Deliveries

    package func claimDeliveries(
        now: Timestamp,
        lease: Duration,
        limit: Int,
        perTarget: Int,
        window: Int,
        healthy: [String]
    ) async throws -> [Delivery] {
        try await pool.write { db in
            try Self.fanOut(now: now, window: window, healthy: Set(healthy), limit: max(limit, 64), db)
            // At most `perTarget` of each target, so one claim reaches many targets; the
            // healthy targets' first. A subscription's delivery is signed with its secrets
            // as they are now.
            let claimed = try Row.fetchAll(
                try db.cachedStatement(
                    sql: """
                        SELECT due.*, subscriptions.secret AS current_secret, subscriptions.previous_secret,
                               subscriptions.previous_secret_until
                        FROM (SELECT deliveries.*, ROW_NUMBER() OVER
                                (PARTITION BY target ORDER BY next_attempt_at, seq) AS place_in_target
                              FROM deliveries WHERE state = 'pending' AND next_attempt_at <= ?1) AS due
                        LEFT JOIN subscriptions ON subscriptions.id = due.subscription_id
                        WHERE due.place_in_target <= ?2
                        ORDER BY due.target IN (SELECT value FROM json_each(?3)) DESC, due.next_attempt_at, due.seq
                        LIMIT ?4
                        """
                ),
                arguments: [now.millisecondsSince1970, perTarget, Self.jsonArray(healthy), limit]
            )
            let leasedUntil = now.adding(milliseconds: lease.milliseconds).millisecondsSince1970
            let lease = try db.cachedStatement(
                sql: "UPDATE deliveries SET next_attempt_at = ?1, leased_until = ?1, lease = lease + 1 WHERE id = ?2"
            )
            for row in claimed {
                try lease.execute(arguments: [leasedUntil, row["id"] as String])
            }
            return try claimed.map { row in
                var delivery = try Self.delivery(from: row)
                delivery.lease = (row["lease"] as Int64) + 1
                if let current: String = row["current_secret"] {
                    delivery.secrets = Subscription.signingSecrets(
                        current,
                        previous: row["previous_secret"],
                        expiresAt: (row["previous_secret_until"] as Int64?).map(Timestamp.init(millisecondsSince1970:)),
                        at: now
                    )
                }
                return delivery
            }
        }
    }

    package func nextDeliveryDue(now: Timestamp, window: Int) async throws -> Timestamp? {
        try await pool.read { db in
            if let head = try Self.logHead(db),
                try !Self.fanOutCandidates(head: head, now: now, window: window, limit: 1, db).isEmpty
            {
                return now
            }
            return try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'")
            ).map(Timestamp.init(millisecondsSince1970:))
        }
    }

    package func holdDeliveries(
        _ deliveries: [(id: String, until: Timestamp)],
        parking targets: [(target: String, until: Timestamp)],
        at now: Timestamp
    ) async throws {
        try await pool.write { db in
            let hold = try db.cachedStatement(
                sql: "UPDATE deliveries SET next_attempt_at = ? WHERE id = ? AND state = 'pending'"
            )
            for delivery in deliveries {
                try hold.execute(arguments: [delivery.until.millisecondsSince1970, delivery.id])
            }
            // The backlog is what is due and what was parked before; a leased delivery (in
            // flight) and a scheduled retry keep their times.
            let park = try db.cachedStatement(
                sql: """
                    UPDATE deliveries SET next_attempt_at = ?1
                    WHERE state = 'pending' AND target = ?2 AND (next_attempt_at <= ?3 OR next_attempt_at =
                          (SELECT until FROM parked_targets WHERE parked_targets.target = ?2))
                    """
            )
            let remember = try db.cachedStatement(
                sql: "INSERT OR REPLACE INTO parked_targets (target, until) VALUES (?, ?)"
            )
            let skip = try db.cachedStatement(
                sql: "UPDATE subscriptions SET fan_out_at = MAX(fan_out_at, ?) WHERE target = ?"
            )
            for target in targets {
                try park.execute(arguments: [
                    target.until.millisecondsSince1970, target.target, now.millisecondsSince1970,
                ])
                try remember.execute(arguments: [target.target, target.until.millisecondsSince1970])
                try skip.execute(arguments: [target.until.millisecondsSince1970, target.target])
            }
        }
    }

    private static func unparkTarget(_ target: String, at now: Timestamp, _ db: Database) throws {
        guard
            let until = try Int64.fetchOne(
                try db.cachedStatement(sql: "SELECT until FROM parked_targets WHERE target = ?"),
                arguments: [target]
            )
        else { return }
        try db.cachedStatement(sql: "DELETE FROM parked_targets WHERE target = ?").execute(arguments: [target])
        try db.cachedStatement(sql: "UPDATE subscriptions SET fan_out_at = 0 WHERE target = ?")
            .execute(arguments: [target])
        // Exactly the parked ones: a leased delivery (in flight) or a scheduled retry has
        // another time.
        try db.cachedStatement(
            sql: """
                UPDATE deliveries SET next_attempt_at = ?
                WHERE state = 'pending' AND target = ? AND next_attempt_at = ?
                """
        ).execute(arguments: [now.millisecondsSince1970, target, until])
    }

    package func unparkAll(at now: Timestamp) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    UPDATE deliveries SET next_attempt_at = ?
                    WHERE state = 'pending' AND next_attempt_at =
                          (SELECT until FROM parked_targets WHERE parked_targets.target = deliveries.target)
                    """,
                arguments: [now.millisecondsSince1970]
            )
            try db.execute(sql: "DELETE FROM parked_targets")
            try db.execute(sql: "UPDATE subscriptions SET fan_out_at = 0")
        }
    }

    package func recordAttempts(
        _ records: [AttemptRecord],
        unparking targets: [String],
        disableFailingBefore cutoff: Timestamp,
        at now: Timestamp
    ) async throws {
        try await pool.write { db in
            for record in records {
                try Self.recordAttempt(record, cutoff, db)
            }
            for target in targets { try Self.unparkTarget(target, at: now, db) }
        }
    }

    private static func recordAttempt(_ record: AttemptRecord, _ cutoff: Timestamp, _ db: Database) throws {
        let (attempt, id, outcome) = (record.attempt, record.deliveryID, record.outcome)
        let at = attempt.at.millisecondsSince1970
        guard
            let row = try Row.fetchOne(
                try db.cachedStatement(sql: "SELECT * FROM deliveries WHERE id = ?"),
                arguments: [id]
            )
        else { return }
        let delivery = try Self.delivery(from: row)
        try db.cachedStatement(
            sql: """
                INSERT INTO delivery_attempts (delivery_id, at, status_code, duration_ms, error, snippet)
                VALUES (?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            id, at, attempt.statusCode, attempt.durationMilliseconds, attempt.error, attempt.snippet,
        ])
        // A delivered or failed delivery never changes again through an attempt; one made under
        // an older lease (claimed again after its lease ran out) changes it only by succeeding.
        guard delivery.state == .pending else { return }
        let current = record.lease.map { $0 == row["lease"] as Int64 } ?? true
        guard current || outcome == .delivered else { return }
        let state: Delivery.State
        var next: Int64?
        switch outcome {
        case .delivered: state = .delivered
        case .retry(let time): (state, next) = (.pending, time.millisecondsSince1970)
        case .failed, .gone: state = .failed
        }
        try db.cachedStatement(
            sql:
                """
                UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, updated_at = ?,
                  leased_until = NULL
                WHERE id = ? AND state = 'pending'
                """
        ).execute(arguments: [state.rawValue, next, at, id])
        if let subscription = delivery.subscriptionID {
            if delivery.attempts == 0 {
                // Room in its window: the fan-out looks at it again, unless its target is parked.
                try db.cachedStatement(
                    sql: """
                        UPDATE subscriptions SET fan_out_at = COALESCE(
                          (SELECT until FROM parked_targets WHERE parked_targets.target = subscriptions.target), 0)
                        WHERE id = ?
                        """
                ).execute(arguments: [subscription])
            }
            // A success ends a run of failures; a failure starts one if none is running.
            try db.cachedStatement(
                sql: outcome == .delivered
                    ? "UPDATE subscriptions SET failing_since = NULL WHERE id = ?"
                    : "UPDATE subscriptions SET failing_since = COALESCE(failing_since, ?) WHERE id = ?"
            ).execute(arguments: outcome == .delivered ? [subscription] : [at, subscription])
            try db.cachedStatement(
                sql: """
                    UPDATE subscriptions SET disabled_at = ?
                    WHERE id = ? AND disabled_at IS NULL AND failing_since < ?
                    """
            ).execute(arguments: [at, subscription, cutoff.millisecondsSince1970])
            if db.changesCount > 0 { try Self.failPending(subscription: subscription, at: at, db) }
        }
        guard outcome == .gone else { return }
        if let subscription = delivery.subscriptionID {
            _ = try Self.deleteSubscription(subscription, at: attempt.at, db)
        } else if let check = delivery.checkID {
            try db.cachedStatement(
                sql: "UPDATE checks SET callback_stopped = 1 WHERE id = ?"
            ).execute(arguments: [check])
            try db.cachedStatement(
                sql: """
                    UPDATE deliveries SET state = 'failed', next_attempt_at = NULL, updated_at = ?
                    WHERE check_id = ? AND subscription_id IS NULL AND state = 'pending'
                    """
            ).execute(arguments: [at, check])
        }
    }

    package func deliveries(matching query: DeliveryQuery) async throws -> (items: [Delivery], next: String?) {
        let (sql, arguments) = try Self.newestFirst(
            from: "deliveries",
            where: [
                ("subscription_id", query.subscriptionID), ("check_id", query.checkID),
                ("state", query.state?.rawValue),
            ],
            cursor: query.cursor,
            limit: query.limit
        )
        return try await pool.read { db in
            let (page, next) = Self.page(try Row.fetchAll(db, sql: sql, arguments: arguments), limit: query.limit)
            return (try page.map(Self.delivery(from:)), next)
        }
    }

    package func delivery(_ id: String) async throws -> (Delivery, [DeliveryAttempt])? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM deliveries WHERE id = ?", arguments: [id]) else {
                return nil
            }
            let attempts = try Row.fetchAll(
                db,
                sql: "SELECT * FROM delivery_attempts WHERE delivery_id = ? ORDER BY at, rowid",
                arguments: [id]
            ).map { row in
                DeliveryAttempt(
                    at: Timestamp(millisecondsSince1970: row["at"]),
                    statusCode: row["status_code"],
                    durationMilliseconds: row["duration_ms"],
                    error: row["error"],
                    snippet: row["snippet"]
                )
            }
            return (try Self.delivery(from: row), attempts)
        }
    }

    package func retryDelivery(_ id: String, at time: Timestamp) async throws -> Delivery? {
        try await pool.write { db in
            try db.execute(
                // An attempt in flight keeps its lease: the retry comes after it, never beside it.
                sql: """
                    UPDATE deliveries SET state = 'pending', next_attempt_at = MAX(?1, COALESCE(leased_until, 0)),
                      updated_at = ?1
                    WHERE id = ?2
                    """,
                arguments: [time.millisecondsSince1970, id]
            )
            return try Row.fetchOne(db, sql: "SELECT * FROM deliveries WHERE id = ?", arguments: [id])
                .map(Self.delivery(from:))
        }
    }

    package func replay(subscription id: String, since time: Timestamp, at now: Timestamp) async throws -> Int? {
        try await pool.write { db in
            guard let subscription = try Self.fetchSubscription(id, db) else { return nil }
            let events = try Row.fetchAll(
                db,
                sql: """
                    SELECT events.channel, events.offset, events.type, events.time, events.data, channels.epoch
                    FROM events JOIN channels ON channels.name = events.channel
                    WHERE events.time >= ? ORDER BY events.time, events.channel, events.offset
                    """,
                arguments: [time.millisecondsSince1970]
            )
            var queued = 0
            for row in events where subscription.matches(row["type"]) {
                guard let channel = ChannelName(row["channel"] as String) else { continue }
                let event = Event(
                    channel: channel,
                    offset: row["offset"],
                    epoch: Epoch(row["epoch"]),
                    type: row["type"],
                    time: Timestamp(millisecondsSince1970: row["time"]),
                    data: row["data"]
                )
                try Self.insertDelivery(
                    subscription: subscription.id,
                    check: nil,
                    url: subscription.targetURL,
                    secret: subscription.secret,
                    type: event.type,
                    eventTime: event.time,
                    payload: Self.payload(of: event),
                    at: now,
                    db
                )
                queued += 1
            }
            return queued
        }
    }

    // MARK: Rows

    /// `strings` as a JSON array, for `json_each`.
    private static func jsonArray(_ strings: [String]) -> String {
        HeraldCore.jsonArray(
            strings.lazy.map { string in
                var quoted = ""
                JSONWriter.appendString(string, to: &quoted)
                return quoted
            }
        )
    }

    private static func subscription(from row: Row) -> Subscription {
        var subscription = Subscription(
            id: row["id"],
            targetURL: row["target_url"],
            event: row["event"],
            secret: row["secret"],
            createdAt: Timestamp(millisecondsSince1970: row["created_at"])
        )
        subscription.updatedAt = Timestamp(millisecondsSince1970: row["updated_at"])
        subscription.disabledAt = (row["disabled_at"] as Int64?).map(Timestamp.init(millisecondsSince1970:))
        subscription.failingSince = (row["failing_since"] as Int64?).map(Timestamp.init(millisecondsSince1970:))
        subscription.previousSecret = row["previous_secret"]
        subscription.previousSecretExpiresAt =
            (row["previous_secret_until"] as Int64?).map(Timestamp.init(millisecondsSince1970:))
        return subscription
    }

    private static func delivery(from row: Row) throws -> Delivery {
        guard let state = Delivery.State(rawValue: row["state"]) else {
            throw HeraldError(.internal, "stored delivery \(row["id"] as String) has no valid state")
        }
        return Delivery(
            id: row["id"],
            subscriptionID: row["subscription_id"],
            checkID: row["check_id"],
            targetURL: row["target_url"],
            target: row["target"],
            secrets: [row["secret"]],
            eventType: row["event_type"],
            payload: row["payload"],
            state: state,
            attempts: row["attempts"],
            nextAttemptAt: (row["next_attempt_at"] as Int64?).map(Timestamp.init(millisecondsSince1970:)),
            createdAt: Timestamp(millisecondsSince1970: row["created_at"]),
            updatedAt: Timestamp(millisecondsSince1970: row["updated_at"])
        )
    }
}
