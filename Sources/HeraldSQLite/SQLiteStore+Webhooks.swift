internal import GRDB
package import HeraldCore
package import HeraldStore

extension SQLiteStore {
    // MARK: Subscriptions

    package func createSubscription(_ subscription: Subscription) async throws {
        try await pool.write { db in
            try db.execute(
                sql: """
                    INSERT INTO subscriptions (id, target_url, target, event, secret, created_at, updated_at, cursor)
                    VALUES (?, ?, ?, ?, ?, ?, ?, \(Self.logEnd))
                    """,
                arguments: [
                    subscription.id, subscription.targetURL, Delivery.target(of: subscription.targetURL),
                    subscription.event, subscription.secret,
                    subscription.createdAt.millisecondsSince1970, subscription.updatedAt.millisecondsSince1970,
                ]
            )
        }
    }

    /// SQL for the last `seq` the webhook event log handed out, where a new or re-enabled
    /// subscription starts: `sqlite_sequence` keeps it when the janitor has emptied the log
    /// (`MAX(seq)` would then be 0, and the subscription would seem behind every event ever).
    static let logEnd = "(SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'webhook_events'), 0))"

    package func subscription(_ id: String) async throws -> Subscription? {
        try await pool.read { db in try Self.fetchSubscription(id, db) }
    }

    package func subscriptions(limit: Int, cursor: String?) async throws -> (items: [Subscription], next: String?) {
        let after = try PageCursor.sequence(of: cursor)
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
                                             disabled_reason = NULL, failing_since = NULL, fan_out_at = 0, cursor = CASE WHEN disabled_at IS NULL THEN cursor
                                             ELSE \(Self.logEnd) END
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

    static func failPending(subscription id: String, at time: Int64, _ db: Database) throws {
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
            let claimed = try Self.dueRows(now: now, perTarget: perTarget, healthy: healthy, limit: limit, db)
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

    /// Due deliveries a claim may number in one pass; with more due, it walks the targets.
    /// Numbering costs about 4 µs a due row, walking about 3 µs a target with pending deliveries
    /// (parked ones too), as measured on SQLite 3.40 here: a few hundred due rows is where a
    /// walk over a thousand parked targets begins to pay.
    static let claimScan = 256

    /// The rows a claim takes: due now, at most `perTarget` of each target (so one claim reaches
    /// many targets), the `healthy` targets' first, then oldest first, at most `limit`, each
    /// with its subscription's secrets as they are now. Never a read of the whole backlog: with
    /// few due (at most ``claimScan``) it numbers them per target; with more, it walks the
    /// targets with pending deliveries one index step each and takes each one's first due ones,
    /// so it reads targets x `perTarget` index entries. Only the `limit` chosen are read whole.
    private static func dueRows(
        now: Timestamp,
        perTarget: Int,
        healthy: [String],
        limit: Int,
        _ db: Database
    ) throws -> [Row] {
        let due =
            try Int.fetchOne(
                try db.cachedStatement(
                    sql: """
                        SELECT COUNT(*) FROM (SELECT 1 FROM deliveries INDEXED BY deliveries_due
                                              WHERE state = 'pending' AND next_attempt_at <= ? LIMIT ?)
                        """
                ),
                arguments: [now.millisecondsSince1970, claimScan + 1]
            ) ?? 0
        let candidates =
            due <= claimScan
            ? """
            SELECT seq, target, next_attempt_at FROM
              (SELECT seq, target, next_attempt_at,
                      ROW_NUMBER() OVER (PARTITION BY target ORDER BY next_attempt_at, seq) AS place_in_target
               FROM deliveries INDEXED BY deliveries_due WHERE state = 'pending' AND next_attempt_at <= ?1)
            WHERE place_in_target <= ?2
            """
            : """
            WITH RECURSIVE targets(target) AS (
              SELECT (SELECT target FROM deliveries INDEXED BY deliveries_target
                      WHERE state = 'pending' ORDER BY target LIMIT 1)
              UNION ALL
              SELECT (SELECT target FROM deliveries INDEXED BY deliveries_target
                      WHERE state = 'pending' AND target > targets.target ORDER BY target LIMIT 1)
              FROM targets WHERE targets.target IS NOT NULL)
            SELECT first.seq, first.target, first.next_attempt_at FROM targets JOIN deliveries AS first ON first.seq IN
              (SELECT seq FROM deliveries INDEXED BY deliveries_target
               WHERE state = 'pending' AND target = targets.target AND next_attempt_at <= ?1
               ORDER BY next_attempt_at, seq LIMIT ?2)
            """
        return try Row.fetchAll(
            try db.cachedStatement(
                sql: """
                    WITH due AS (\(candidates)),
                    chosen AS (SELECT seq, target IN (SELECT value FROM json_each(?3)) AS preferred, next_attempt_at
                               FROM due ORDER BY preferred DESC, next_attempt_at, seq LIMIT ?4)
                    SELECT deliveries.*, subscriptions.secret AS current_secret, subscriptions.previous_secret,
                           subscriptions.previous_secret_until
                    FROM chosen JOIN deliveries ON deliveries.seq = chosen.seq
                    LEFT JOIN subscriptions ON subscriptions.id = deliveries.subscription_id
                    ORDER BY chosen.preferred DESC, chosen.next_attempt_at, chosen.seq
                    """
            ),
            arguments: [now.millisecondsSince1970, perTarget, Self.jsonArray(healthy), limit]
        )
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
        policy: any AttemptPolicy,
        at now: Timestamp
    ) async throws {
        try await pool.write { db in
            for record in records {
                try Self.recordAttempt(record, policy, db)
            }
            for target in targets { try Self.unparkTarget(target, at: now, db) }
        }
    }

    /// Logs the attempt, then applies what `policy` makes of it.
    private static func recordAttempt(_ record: AttemptRecord, _ policy: any AttemptPolicy, _ db: Database) throws {
        let (attempt, id) = (record.attempt, record.deliveryID)
        let at = attempt.at.millisecondsSince1970
        guard
            let row = try Row.fetchOne(
                try db.cachedStatement(
                    sql: """
                        SELECT deliveries.*, subscriptions.id AS subscription_found,
                               subscriptions.failing_since, subscriptions.disabled_at
                        FROM deliveries LEFT JOIN subscriptions ON subscriptions.id = deliveries.subscription_id
                        WHERE deliveries.id = ?
                        """
                ),
                arguments: [id]
            )
        else { return }
        var delivery = try Self.delivery(from: row)
        delivery.lease = row["lease"]
        try db.cachedStatement(
            sql: """
                INSERT INTO delivery_attempts (delivery_id, at, status_code, duration_ms, error, snippet)
                VALUES (?, ?, ?, ?, ?, ?)
                """
        ).execute(arguments: [
            id, at, attempt.statusCode, attempt.durationMilliseconds, attempt.error, attempt.snippet,
        ])
        let health = (row["subscription_found"] as String?).map { _ in
            SubscriptionHealth(
                failingSince: (row["failing_since"] as Int64?).map(Timestamp.init(millisecondsSince1970:)),
                isDisabled: row["disabled_at"] as Int64? != nil
            )
        }
        for effect in policy.effects(of: record, on: AttemptSubject(delivery: delivery, subscription: health)) {
            try apply(effect, to: id, at: attempt.at, db)
        }
    }

    /// One ``AttemptEffect`` of an attempt of delivery `id`, made at `time`.
    private static func apply(_ effect: AttemptEffect, to id: String, at time: Timestamp, _ db: Database) throws {
        let at = time.millisecondsSince1970
        switch effect {
        case .settle(let state, let due):
            try db.cachedStatement(
                sql: """
                    UPDATE deliveries SET state = ?, attempts = attempts + 1, next_attempt_at = ?, updated_at = ?,
                      leased_until = NULL
                    WHERE id = ? AND state = 'pending'
                    """
            ).execute(arguments: [state.rawValue, due?.millisecondsSince1970, at, id])
        case .reopenFanOut(let subscription):
            try db.cachedStatement(
                sql: """
                    UPDATE subscriptions SET fan_out_at = COALESCE(
                      (SELECT until FROM parked_targets WHERE parked_targets.target = subscriptions.target), 0)
                    WHERE id = ?
                    """
            ).execute(arguments: [subscription])
        case .failing(let subscription, let since):
            try db.cachedStatement(sql: "UPDATE subscriptions SET failing_since = ? WHERE id = ?")
                .execute(arguments: [since?.millisecondsSince1970, subscription])
        case .disable(let subscription, let reason):
            try db.cachedStatement(
                sql:
                    "UPDATE subscriptions SET disabled_at = ?, disabled_reason = ? WHERE id = ? AND disabled_at IS NULL"
            ).execute(arguments: [at, reason.rawValue, subscription])
            if db.changesCount > 0 { try failPending(subscription: subscription, at: at, db) }
        case .delete(let subscription):
            _ = try deleteSubscription(subscription, at: time, db)
        case .stopCallbacks(let check):
            try db.cachedStatement(sql: "UPDATE checks SET callback_stopped = 1 WHERE id = ?")
                .execute(arguments: [check])
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
                    payload: Delivery.payload(of: event),
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
        subscription.disabledReason = (row["disabled_reason"] as String?).flatMap(Subscription.DisabledReason.init)
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
