package import HeraldCore
package import HeraldStore
internal import PostgresNIO

extension PostgresStore: DeliveryQueue {
    static let deliveryColumnNames = [
        "id", "subscription_id", "check_id", "target_url", "target", "secret", "event_type", "payload", "state",
        "attempts", "next_attempt_at", "created_at", "updated_at", "lease",
    ]
    static let deliveryColumns = deliveryColumnNames.joined(separator: ", ")

    typealias DeliveryColumns = (
        String, String?, String?, String, String, String, String, String, String, Int, Int64?, Int64, Int64, Int64
    )

    static func delivery(_ columns: DeliveryColumns) throws -> Delivery {
        guard let state = Delivery.State(rawValue: columns.8) else {
            throw HeraldError(.internal, "stored delivery \(columns.0) has no valid state")
        }
        var delivery = Delivery(
            id: columns.0,
            subscriptionID: columns.1,
            checkID: columns.2,
            targetURL: columns.3,
            target: columns.4,
            secrets: [columns.5],
            eventType: columns.6,
            payload: columns.7,
            state: state,
            attempts: columns.9,
            nextAttemptAt: columns.10.map(Timestamp.init(millisecondsSince1970:)),
            createdAt: Timestamp(millisecondsSince1970: columns.11),
            updatedAt: Timestamp(millisecondsSince1970: columns.12)
        )
        delivery.lease = columns.13
        return delivery
    }

    static func deliveries(in rows: PostgresRowSequence) async throws -> [Delivery] {
        var found: [Delivery] = []
        for try await columns in rows.decode(DeliveryColumns.self) { found.append(try delivery(columns)) }
        return found
    }

    package func claimDeliveries(
        now: Timestamp,
        lease: Duration,
        limit: Int,
        perTarget: Int,
        window: Int,
        healthy: [String]
    ) async throws -> [Delivery] {
        let leasedUntil = now.adding(milliseconds: lease.milliseconds).millisecondsSince1970
        return try await transaction { connection in
            try await Self.fanOut(
                now: now,
                window: window,
                healthy: Set(healthy),
                limit: max(limit, 64),
                connection,
                self.logger
            )
            // Due now, at most `perTarget` of a target, the healthy targets' first, then oldest
            // first. A claim racing on another node waits for these rows' locks, then finds them
            // no longer due, so each delivery is claimed once.
            let rows = try await connection.query(
                """
                WITH due AS (
                  SELECT seq, target, next_attempt_at,
                         ROW_NUMBER() OVER (PARTITION BY target ORDER BY next_attempt_at, seq) AS place
                  FROM deliveries WHERE state = 'pending' AND next_attempt_at <= \(now.millisecondsSince1970)),
                chosen AS (
                  SELECT seq, target = ANY(\(healthy)) AS preferred, next_attempt_at AS due_at FROM due
                  WHERE place <= \(perTarget)
                  ORDER BY preferred DESC, next_attempt_at, seq LIMIT \(limit))
                UPDATE deliveries SET next_attempt_at = \(leasedUntil), leased_until = \(leasedUntil), lease = lease + 1
                FROM chosen
                WHERE deliveries.seq = chosen.seq AND deliveries.state = 'pending'
                  AND deliveries.next_attempt_at <= \(now.millisecondsSince1970)
                RETURNING chosen.preferred, chosen.due_at, chosen.seq, \(unescaped: Self.deliveryColumnNames.map { "deliveries." + $0 }.joined(separator: ", "))
                """,
                logger: self.logger
            )
            var claimed: [(preferred: Bool, due: Int64, seq: Int64, delivery: Delivery)] = []
            for try await row in rows.decode(
                (
                    Bool, Int64, Int64, String, String?, String?, String, String, String, String, String, String, Int,
                    Int64?, Int64, Int64, Int64
                ).self
            ) {
                let delivery = try Self.delivery(
                    (
                        row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11, row.12, row.13, row.14,
                        row.15, row.16
                    )
                )
                claimed.append((row.0, row.1, row.2, delivery))
            }
            claimed.sort { ($0.preferred ? 0 : 1, $0.due, $0.seq) < ($1.preferred ? 0 : 1, $1.due, $1.seq) }
            // A subscription's delivery is signed with its secrets as they are now.
            let ids = Array(Set(claimed.compactMap(\.delivery.subscriptionID)))
            var secrets: [String: (String, String?, Int64?)] = [:]
            if !ids.isEmpty {
                let found = try await connection.query(
                    "SELECT id, secret, previous_secret, previous_secret_until FROM subscriptions WHERE id = ANY(\(ids))",
                    logger: self.logger
                )
                for try await (id, secret, previous, until) in found.decode((String, String, String?, Int64?).self) {
                    secrets[id] = (secret, previous, until)
                }
            }
            return claimed.map { entry in
                var delivery = entry.delivery
                if let id = delivery.subscriptionID, let (current, previous, until) = secrets[id] {
                    delivery.secrets = Subscription.signingSecrets(
                        current,
                        previous: previous,
                        expiresAt: until.map(Timestamp.init(millisecondsSince1970:)),
                        at: now
                    )
                }
                return delivery
            }
        }
    }

    package func nextDeliveryDue(now: Timestamp, window: Int) async throws -> Timestamp? {
        try await withConnection { connection in
            let head = try await Self.logHead(connection, self.logger)
            if head > 0,
                try await !Self.fanOutCandidates(
                    head: head,
                    now: now,
                    window: window,
                    limit: 1,
                    lock: false,
                    connection,
                    self.logger
                ).isEmpty
            {
                return now
            }
            var due: Int64?
            for try await value in try await connection.query(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending'",
                logger: self.logger
            ).decode(Int64?.self) {
                due = value
            }
            return due.map(Timestamp.init(millisecondsSince1970:))
        }
    }

    package func recordAttempts(
        _ records: [AttemptRecord],
        unparking targets: [String],
        policy: any AttemptPolicy,
        at now: Timestamp
    ) async throws {
        try await transaction { connection in
            // Every write here locks a subscription before its deliveries; this one too, and
            // subscriptions in id order, so two nodes' batches never wait on each other in a
            // cycle. (A delivery's subscription never changes, so it is read without a lock.)
            var owners: [String: String] = [:]
            if !records.isEmpty {
                for try await (id, subscription) in try await connection.query(
                    "SELECT id, subscription_id FROM deliveries WHERE id = ANY(\(records.map(\.deliveryID)))",
                    logger: self.logger
                ).decode((String, String?).self) {
                    owners[id] = subscription
                }
            }
            let ordered = records.enumerated().sorted { a, b in
                let (left, right) = (owners[a.element.deliveryID] ?? "", owners[b.element.deliveryID] ?? "")
                return left != right ? left < right : a.offset < b.offset
            }
            for (_, record) in ordered {
                try await self.recordAttempt(record, of: owners[record.deliveryID], policy, connection)
            }
            for target in targets { try await Self.unparkTarget(target, at: now, connection, self.logger) }
        }
    }

    /// Logs the attempt, then applies what `policy` makes of it, with the rows of the
    /// delivery's `subscription` (if any, and still there) and of the delivery locked, in that order.
    private func recordAttempt(
        _ record: AttemptRecord,
        of subscription: String?,
        _ policy: any AttemptPolicy,
        _ connection: PostgresConnection
    )
        async throws
    {
        let (attempt, id) = (record.attempt, record.deliveryID)
        var health: SubscriptionHealth?
        if let subscription {
            let found = try await connection.query(
                "SELECT failing_since, disabled_at FROM subscriptions WHERE id = \(subscription) FOR NO KEY UPDATE",
                logger: logger
            )
            for try await (failingSince, disabledAt) in found.decode((Int64?, Int64?).self) {
                health = SubscriptionHealth(
                    failingSince: failingSince.map(Timestamp.init(millisecondsSince1970:)),
                    isDisabled: disabledAt != nil
                )
            }
        }
        let rows = try await connection.query(
            "SELECT \(unescaped: Self.deliveryColumns) FROM deliveries WHERE id = \(id) FOR UPDATE",
            logger: logger
        )
        guard let delivery = try await Self.deliveries(in: rows).first else { return }
        try await connection.query(
            """
            INSERT INTO delivery_attempts (delivery_id, at, status_code, duration_ms, error, snippet)
            VALUES (\(id), \(attempt.at.millisecondsSince1970), \(attempt.statusCode), \(attempt.durationMilliseconds),
                    \(attempt.error), \(attempt.snippet))
            """,
            logger: logger
        )
        for effect in policy.effects(of: record, on: AttemptSubject(delivery: delivery, subscription: health)) {
            try await apply(effect, to: id, at: attempt.at, connection)
        }
    }

    /// One ``AttemptEffect`` of an attempt of delivery `id`, made at `time`.
    private func apply(
        _ effect: AttemptEffect,
        to id: String,
        at time: Timestamp,
        _ connection: PostgresConnection
    ) async throws {
        let at = time.millisecondsSince1970
        switch effect {
        case .settle(let state, let due):
            try await connection.query(
                """
                UPDATE deliveries SET state = \(state.rawValue), attempts = attempts + 1,
                  next_attempt_at = \(due?.millisecondsSince1970), updated_at = \(at), leased_until = NULL
                WHERE id = \(id) AND state = 'pending'
                """,
                logger: logger
            )
        case .reopenFanOut(let subscription):
            try await connection.query(
                """
                UPDATE subscriptions SET fan_out_at = COALESCE(
                  (SELECT until FROM parked_targets WHERE parked_targets.target = subscriptions.target), 0)
                WHERE id = \(subscription)
                """,
                logger: logger
            )
        case .failing(let subscription, let since):
            try await connection.query(
                "UPDATE subscriptions SET failing_since = \(since?.millisecondsSince1970) WHERE id = \(subscription)",
                logger: logger
            )
        case .disable(let subscription, let reason):
            let disabled = try await connection.query(
                """
                UPDATE subscriptions SET disabled_at = \(at), disabled_reason = \(reason.rawValue)
                WHERE id = \(subscription) AND disabled_at IS NULL
                RETURNING id
                """,
                logger: logger
            )
            var wasDisabled = false
            for try await _ in disabled.decode(String.self) { wasDisabled = true }
            if wasDisabled { try await Self.failPending(subscription: subscription, at: time, connection, logger) }
        case .delete(let subscription):
            _ = try await Self.deleteSubscription(subscription, at: time, connection, logger)
        case .stopCallbacks(let check):
            try await connection.query("UPDATE checks SET callback_stopped = true WHERE id = \(check)", logger: logger)
            try await connection.query(
                """
                UPDATE deliveries SET state = 'failed', next_attempt_at = NULL, updated_at = \(at)
                WHERE check_id = \(check) AND subscription_id IS NULL AND state = 'pending'
                """,
                logger: logger
            )
        }
    }

    package func holdDeliveries(
        _ deliveries: [(id: String, until: Timestamp)],
        parking targets: [(target: String, until: Timestamp)],
        at now: Timestamp
    ) async throws {
        try await transaction { connection in
            for delivery in deliveries {
                try await connection.query(
                    """
                    UPDATE deliveries SET next_attempt_at = \(delivery.until.millisecondsSince1970)
                    WHERE id = \(delivery.id) AND state = 'pending'
                    """,
                    logger: self.logger
                )
            }
            for target in targets {
                let until = target.until.millisecondsSince1970
                // The backlog is what is due and what was parked before; a leased delivery (in
                // flight) and a scheduled retry keep their times.
                try await connection.query(
                    """
                    UPDATE deliveries SET next_attempt_at = \(until)
                    WHERE state = 'pending' AND target = \(target.target)
                      AND (next_attempt_at <= \(now.millisecondsSince1970) OR next_attempt_at =
                           (SELECT until FROM parked_targets WHERE parked_targets.target = \(target.target)))
                    """,
                    logger: self.logger
                )
                try await connection.query(
                    """
                    INSERT INTO parked_targets (target, until) VALUES (\(target.target), \(until))
                    ON CONFLICT (target) DO UPDATE SET until = EXCLUDED.until
                    """,
                    logger: self.logger
                )
                try await connection.query(
                    "UPDATE subscriptions SET fan_out_at = GREATEST(fan_out_at, \(until)) WHERE target = \(target.target)",
                    logger: self.logger
                )
            }
        }
    }

    static func unparkTarget(
        _ target: String,
        at now: Timestamp,
        _ connection: PostgresConnection,
        _ logger: Logger
    )
        async throws
    {
        var parkedUntil: Int64?
        for try await until in try await connection.query(
            "DELETE FROM parked_targets WHERE target = \(target) RETURNING until",
            logger: logger
        ).decode(Int64.self) {
            parkedUntil = until
        }
        guard let parkedUntil else { return }
        try await connection.query("UPDATE subscriptions SET fan_out_at = 0 WHERE target = \(target)", logger: logger)
        // Exactly the parked ones: a leased delivery or a scheduled retry has another time.
        try await connection.query(
            """
            UPDATE deliveries SET next_attempt_at = \(now.millisecondsSince1970)
            WHERE state = 'pending' AND target = \(target) AND next_attempt_at = \(parkedUntil)
            """,
            logger: logger
        )
    }

    package func unparkAll(at now: Timestamp) async throws {
        try await transaction { connection in
            try await connection.query(
                """
                UPDATE deliveries SET next_attempt_at = \(now.millisecondsSince1970)
                FROM parked_targets
                WHERE deliveries.state = 'pending' AND parked_targets.target = deliveries.target
                  AND deliveries.next_attempt_at = parked_targets.until
                """,
                logger: self.logger
            )
            try await connection.query("DELETE FROM parked_targets", logger: self.logger)
            try await connection.query("UPDATE subscriptions SET fan_out_at = 0", logger: self.logger)
        }
    }

    package func deliveries(matching query: DeliveryQuery) async throws -> (items: [Delivery], next: String?) {
        let before = try PageCursor.sequence(of: query.cursor)
        return try await withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT seq, \(unescaped: Self.deliveryColumns) FROM deliveries
                WHERE (\(query.subscriptionID)::text IS NULL OR subscription_id = \(query.subscriptionID))
                  AND (\(query.checkID)::text IS NULL OR check_id = \(query.checkID))
                  AND (\(query.state?.rawValue)::text IS NULL OR state = \(query.state?.rawValue))
                  AND (\(before) = 0 OR seq < \(before))
                ORDER BY seq DESC LIMIT \(query.limit + 1)
                """,
                logger: self.logger
            )
            var found: [(Int64, Delivery)] = []
            for try await row in rows.decode(
                (
                    Int64, String, String?, String?, String, String, String, String, String, String, Int, Int64?, Int64,
                    Int64, Int64
                )
                .self
            ) {
                let delivery = try Self.delivery(
                    (
                        row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11, row.12, row.13,
                        row.14
                    )
                )
                found.append((row.0, delivery))
            }
            let page = found.prefix(query.limit)
            return (page.map(\.1), found.count > query.limit ? page.last.map { PageCursor.cursor(after: $0.0) } : nil)
        }
    }

    package func delivery(_ id: String) async throws -> (Delivery, [DeliveryAttempt])? {
        try await withConnection { connection in
            let rows = try await connection.query(
                "SELECT \(unescaped: Self.deliveryColumns) FROM deliveries WHERE id = \(id)",
                logger: self.logger
            )
            guard let delivery = try await Self.deliveries(in: rows).first else { return nil }
            var attempts: [DeliveryAttempt] = []
            for try await (at, status, duration, error, snippet) in try await connection.query(
                """
                SELECT at, status_code, duration_ms, error, snippet FROM delivery_attempts
                WHERE delivery_id = \(id) ORDER BY at, seq
                """,
                logger: self.logger
            ).decode((Int64, Int?, Int64, String?, String?).self) {
                attempts.append(
                    DeliveryAttempt(
                        at: Timestamp(millisecondsSince1970: at),
                        statusCode: status,
                        durationMilliseconds: duration,
                        error: error,
                        snippet: snippet
                    )
                )
            }
            return (delivery, attempts)
        }
    }

    package func retryDelivery(_ id: String, at time: Timestamp) async throws -> Delivery? {
        // An attempt in flight keeps its lease: the retry comes after it, never beside it.
        try await withConnection { connection in
            let rows = try await connection.query(
                """
                UPDATE deliveries SET state = 'pending',
                  next_attempt_at = GREATEST(\(time.millisecondsSince1970), COALESCE(leased_until, 0)),
                  updated_at = \(time.millisecondsSince1970)
                WHERE id = \(id)
                RETURNING \(unescaped: Self.deliveryColumns)
                """,
                logger: self.logger
            )
            return try await Self.deliveries(in: rows).first
        }
    }

    package func replay(subscription id: String, since time: Timestamp, at now: Timestamp) async throws -> Int? {
        try await transaction { connection in
            guard let subscription = try await Self.fetchSubscription(id, connection, self.logger) else { return nil }
            let rows = try await connection.query(
                """
                SELECT events.channel, events."offset", events.type, events.time, events.data, channels.epoch
                FROM events JOIN channels ON channels.name = events.channel
                WHERE events.time >= \(time.millisecondsSince1970)
                ORDER BY events.time, events.channel, events."offset"
                """,
                logger: self.logger
            )
            var events: [Event] = []
            for try await (name, offset, type, eventTime, data, epoch) in rows.decode(
                (String, Int64, String, Int64, String, String).self
            ) where subscription.matches(type) {
                guard let channel = ChannelName(name) else { continue }
                events.append(
                    Event(
                        channel: channel,
                        offset: offset,
                        epoch: Epoch(epoch),
                        type: type,
                        time: Timestamp(millisecondsSince1970: eventTime),
                        data: data
                    )
                )
            }
            for event in events {
                try await Self.insertDelivery(
                    NewDelivery(
                        subscription: subscription.id,
                        check: nil,
                        url: subscription.targetURL,
                        target: Delivery.target(of: subscription.targetURL),
                        secret: subscription.secret,
                        type: event.type,
                        eventTime: event.time,
                        payload: Delivery.payload(of: event)
                    ),
                    at: now,
                    connection,
                    self.logger
                )
            }
            return events.count
        }
    }
}
