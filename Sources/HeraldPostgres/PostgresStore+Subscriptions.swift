package import HeraldCore
package import HeraldStore
internal import PostgresNIO

extension PostgresStore: SubscriptionStore {
    static let subscriptionColumns = """
        id, target_url, event, secret, created_at, updated_at, disabled_at, disabled_reason, failing_since,
        previous_secret, previous_secret_until
        """

    typealias SubscriptionColumns = (
        String, String, String, String, Int64, Int64, Int64?, String?, Int64?, String?, Int64?
    )

    static func subscription(_ columns: SubscriptionColumns) -> Subscription {
        var subscription = Subscription(
            id: columns.0,
            targetURL: columns.1,
            event: columns.2,
            secret: columns.3,
            createdAt: Timestamp(millisecondsSince1970: columns.4)
        )
        subscription.updatedAt = Timestamp(millisecondsSince1970: columns.5)
        subscription.disabledAt = columns.6.map(Timestamp.init(millisecondsSince1970:))
        subscription.disabledReason = columns.7.flatMap(Subscription.DisabledReason.init)
        subscription.failingSince = columns.8.map(Timestamp.init(millisecondsSince1970:))
        subscription.previousSecret = columns.9
        subscription.previousSecretExpiresAt = columns.10.map(Timestamp.init(millisecondsSince1970:))
        return subscription
    }

    static func subscriptions(in rows: PostgresRowSequence) async throws -> [Subscription] {
        var found: [Subscription] = []
        for try await columns in rows.decode(SubscriptionColumns.self) { found.append(subscription(columns)) }
        return found
    }

    static func fetchSubscription(
        _ id: String,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws
        -> Subscription?
    {
        let rows = try await connection.query(
            "SELECT \(unescaped: subscriptionColumns) FROM subscriptions WHERE id = \(id)",
            logger: logger
        )
        return try await subscriptions(in: rows).first
    }

    package func createSubscription(_ subscription: Subscription) async throws {
        // A new subscription starts at the log's head: it gets what is published from now on.
        try await withConnection { connection in
            try await connection.query(
                """
                INSERT INTO subscriptions (id, target_url, target, event, secret, created_at, updated_at, cursor)
                VALUES (\(subscription.id), \(subscription.targetURL), \(Delivery.target(of: subscription.targetURL)),
                        \(subscription.event), \(subscription.secret), \(subscription.createdAt.millisecondsSince1970),
                        \(subscription.updatedAt.millisecondsSince1970), (SELECT head FROM webhook_log))
                """,
                logger: self.logger
            )
        }
    }

    package func subscription(_ id: String) async throws -> Subscription? {
        try await withConnection { connection in try await Self.fetchSubscription(id, connection, self.logger) }
    }

    package func subscriptions(limit: Int, cursor: String?) async throws -> (items: [Subscription], next: String?) {
        let after = try PageCursor.sequence(of: cursor)
        return try await withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT seq, \(unescaped: Self.subscriptionColumns) FROM subscriptions WHERE seq > \(after)
                ORDER BY seq LIMIT \(limit + 1)
                """,
                logger: self.logger
            )
            var found: [(Int64, Subscription)] = []
            for try await row in rows.decode(
                (Int64, String, String, String, String, Int64, Int64, Int64?, String?, Int64?, String?, Int64?).self
            ) {
                found.append(
                    (
                        row.0,
                        Self.subscription(
                            (row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11)
                        )
                    )
                )
            }
            let page = found.prefix(limit)
            return (page.map(\.1), found.count > limit ? page.last.map { PageCursor.cursor(after: $0.0) } : nil)
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
        let target = Delivery.target(of: targetURL)
        return try await transaction { connection in
            // Re-enabled, it starts again at the log's head; pending deliveries follow the target.
            try await connection.query(
                """
                UPDATE subscriptions SET target_url = \(targetURL), target = \(target), event = \(event),
                  updated_at = \(time.millisecondsSince1970), disabled_reason = NULL, failing_since = NULL,
                  fan_out_at = 0,
                  cursor = CASE WHEN disabled_at IS NULL THEN cursor ELSE (SELECT head FROM webhook_log) END,
                  disabled_at = NULL
                WHERE id = \(id)
                """,
                logger: self.logger
            )
            try await connection.query(
                """
                UPDATE deliveries SET target_url = \(targetURL), target = \(target)
                WHERE subscription_id = \(id) AND state = 'pending'
                """,
                logger: self.logger
            )
            if let secret {
                try await Self.rotateSecret(id, to: secret, overlap: overlap, at: time, connection, self.logger)
            }
            return try await Self.fetchSubscription(id, connection, self.logger)
        }
    }

    package func rotateSecret(
        _ id: String,
        to secret: String,
        overlap: Duration,
        at time: Timestamp
    ) async throws
        -> Subscription?
    {
        try await transaction { connection in
            try await Self.rotateSecret(id, to: secret, overlap: overlap, at: time, connection, self.logger)
            return try await Self.fetchSubscription(id, connection, self.logger)
        }
    }

    static func rotateSecret(
        _ id: String,
        to secret: String,
        overlap: Duration,
        at time: Timestamp,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        try await connection.query(
            """
            UPDATE subscriptions SET previous_secret = secret,
              previous_secret_until = \(time.adding(milliseconds: overlap.milliseconds).millisecondsSince1970),
              secret = \(secret), updated_at = \(time.millisecondsSince1970)
            WHERE id = \(id) AND secret <> \(secret)
            """,
            logger: logger
        )
    }

    package func deleteSubscription(_ id: String, at time: Timestamp) async throws -> Bool {
        try await transaction { connection in try await Self.deleteSubscription(id, at: time, connection, self.logger) }
    }

    static func deleteSubscription(
        _ id: String,
        at time: Timestamp,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws -> Bool {
        let deleted = try await connection.query(
            "DELETE FROM subscriptions WHERE id = \(id) RETURNING id",
            logger: logger
        )
        var existed = false
        for try await _ in deleted.decode(String.self) { existed = true }
        try await failPending(subscription: id, at: time, connection, logger)
        return existed
    }

    static func failPending(
        subscription id: String,
        at time: Timestamp,
        _ connection: PostgresConnection,
        _ logger: Logger
    ) async throws {
        try await connection.query(
            """
            UPDATE deliveries SET state = 'failed', next_attempt_at = NULL, updated_at = \(time.millisecondsSince1970)
            WHERE subscription_id = \(id) AND state = 'pending'
            """,
            logger: logger
        )
    }
}
