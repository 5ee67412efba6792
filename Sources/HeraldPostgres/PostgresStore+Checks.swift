package import HeraldCore
package import HeraldStore
internal import PostgresNIO

extension PostgresStore: CheckStore {
    /// The columns of a check, in ``CheckRow``'s order.
    static let checkColumns = """
        id, kind, params, state, result, error, version, created_at, updated_at, completed_at, callback_url,
        callback_secret, callback_events, callback_stopped, owner_subject, cancel_digest
        """

    /// ``checkColumns``, each as `checks.<column>`.
    static let qualifiedCheckColumns = checkColumns.split(separator: ",")
        .map { "checks." + $0.filter { !$0.isWhitespace } }.joined(separator: ", ")

    package func createCheck(_ check: Check, idempotency: IdempotencyKey?) async throws -> CheckCreation {
        let keyLifetime = retention.idempotencyKeyLifetime.milliseconds
        return try await transaction { connection in
            if let idempotency {
                // The key's row is locked (or inserted) first: a concurrent create with the same
                // key, on any node, waits here and then finds this one's check.
                let claimed = try await connection.query(
                    """
                    INSERT INTO idempotency_keys (key, fingerprint, check_id, created_at)
                    VALUES (\(idempotency.key), \(idempotency.fingerprint), \(check.id.rawValue),
                            \(check.createdAt.millisecondsSince1970))
                    ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
                    RETURNING fingerprint, check_id, created_at
                    """,
                    logger: self.logger
                )
                var first: (String, String, Int64)?
                for try await row in claimed.decode((String, String, Int64).self) { first = row }
                if let (fingerprint, id, createdAt) = first, id != check.id.rawValue {
                    if createdAt > check.createdAt.millisecondsSince1970 - keyLifetime {
                        guard fingerprint == idempotency.fingerprint else {
                            throw HeraldError.invalid("Idempotency-Key was already used with a different request body")
                        }
                        if let existing = try await Self.fetchCheck(connection, id: id, self.logger) {
                            return CheckCreation(check: existing, event: nil)
                        }
                    }
                    // Expired, or its check is gone: the key now names this one.
                    try await connection.query(
                        """
                        UPDATE idempotency_keys SET fingerprint = \(idempotency.fingerprint),
                          check_id = \(check.id.rawValue), created_at = \(check.createdAt.millisecondsSince1970)
                        WHERE key = \(idempotency.key)
                        """,
                        logger: self.logger
                    )
                }
            }
            let row = CheckRow(check)
            try await connection.query(
                """
                INSERT INTO checks (node, \(unescaped: Self.checkColumns))
                VALUES (\(self.node), \(row.id), \(row.kind), \(row.params), \(row.state), \(row.result), \(row.error),
                        \(row.version), \(row.createdAt), \(row.updatedAt), \(row.completedAt), \(row.callbackURL),
                        \(row.callbackSecret), \(row.callbackEvents), \(row.callbackStopped), \(row.ownerSubject),
                        \(row.cancelDigest))
                """,
                logger: self.logger
            )
            let (event, subscribed) = try await Self.append(
                connection,
                type: "check.created",
                data: check.json,
                to: check.id.channel,
                at: check.createdAt,
                maxEvents: nil,
                self.logger
            )
            try await Self.enqueueDeliveries(for: event, of: check, subscribed: subscribed, connection, self.logger)
            return CheckCreation(check: check, event: event)
        }
    }

    package func check(_ id: CheckID) async throws -> Check? {
        try await withConnection { connection in
            try await Self.fetchCheck(connection, id: id.rawValue, self.logger)
        }
    }

    package func checks(matching query: CheckQuery) async throws -> CheckPage {
        let before = try PageCursor.sequence(of: query.cursor)
        return try await withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT seq, \(unescaped: Self.checkColumns) FROM checks
                WHERE (\(query.state?.rawValue)::text IS NULL OR state = \(query.state?.rawValue))
                  AND (\(query.kind?.rawValue)::text IS NULL OR kind = \(query.kind?.rawValue))
                  AND (\(before) = 0 OR seq < \(before))
                ORDER BY seq DESC LIMIT \(query.limit + 1)
                """,
                logger: self.logger
            )
            let found = try await Self.checks(in: rows)
            let page = found.prefix(query.limit)
            let next = found.count > query.limit ? page.last.map { PageCursor.cursor(after: $0.seq) } : nil
            return CheckPage(checks: page.map(\.check), nextCursor: next)
        }
    }

    /// The processing checks this node runs: those it created, and those it took over from a
    /// node that stopped (``takeOverChecks(ownedByNodesSilentSince:limit:)``).
    package func processingChecks(after cursor: ProcessingCursor?, limit: Int) async throws -> ProcessingPage {
        try await withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT seq, \(unescaped: Self.checkColumns) FROM checks
                WHERE state = 'processing' AND node = \(self.node) AND seq > \(cursor?.sequence ?? 0) ORDER BY seq LIMIT \(limit)
                """,
                logger: self.logger
            )
            let found = try await Self.checks(in: rows)
            let next = found.count == limit ? found.last.map { ProcessingCursor(sequence: $0.seq) } : nil
            return ProcessingPage(checks: found.map(\.check), next: next)
        }
    }

    package func finishCheck(
        _ id: CheckID,
        as state: CheckState,
        result: JSONValue?,
        error: JSONValue?,
        at time: Timestamp,
        requiring condition: FinishCondition
    ) async throws -> CheckFinish {
        try await transaction { connection in
            // Locked until commit: of racing finishers, on any node, the first wins and the
            // others then read it ended.
            guard let current = try await Self.fetchCheck(connection, id: id.rawValue, forUpdate: true, self.logger)
            else { return .notFound }
            if let refusal = CheckFinish.refusal(of: current, requiring: condition) { return refusal }
            let next = current.finished(state, result: result, error: error, at: time)
            try await connection.query(
                """
                UPDATE checks SET state = \(next.state.rawValue), result = \(next.result?.jsonText),
                  error = \(next.error?.jsonText), version = \(next.version), updated_at = \(time.millisecondsSince1970),
                  completed_at = \(time.millisecondsSince1970)
                WHERE id = \(id.rawValue)
                """,
                logger: self.logger
            )
            let (event, subscribed) = try await Self.append(
                connection,
                type: state.eventType,
                data: next.json,
                to: id.channel,
                at: time,
                maxEvents: nil,
                self.logger
            )
            try await Self.enqueueDeliveries(for: event, of: next, subscribed: subscribed, connection, self.logger)
            return .finished(next, event)
        }
    }

    // MARK: Rows

    static func fetchCheck(
        _ connection: PostgresConnection,
        id: String,
        forUpdate: Bool = false,
        _ logger: Logger
    ) async throws -> Check? {
        let rows = try await connection.query(
            """
            SELECT 0::bigint, \(unescaped: checkColumns) FROM checks WHERE id = \(id)
            \(unescaped: forUpdate ? "FOR UPDATE" : "")
            """,
            logger: logger
        )
        return try await checks(in: rows).first?.check
    }

    typealias CheckColumns = (
        Int64, String, String, String, String, String?, String?, Int64, Int64, Int64, Int64?, String?, String?,
        String, Bool, String?, String?
    )

    /// The checks of rows `SELECT seq, <checkColumns>`, with their `seq`.
    static func checks(in rows: PostgresRowSequence) async throws -> [(seq: Int64, check: Check)] {
        var checks: [(seq: Int64, check: Check)] = []
        for try await columns in rows.decode(CheckColumns.self) {
            let row = CheckRow(
                id: columns.1,
                kind: columns.2,
                params: columns.3,
                state: columns.4,
                result: columns.5,
                error: columns.6,
                version: columns.7,
                createdAt: columns.8,
                updatedAt: columns.9,
                completedAt: columns.10,
                callbackURL: columns.11,
                callbackSecret: columns.12,
                callbackEvents: columns.13,
                callbackStopped: columns.14,
                ownerSubject: columns.15,
                cancelDigest: columns.16
            )
            checks.append((columns.0, try row.check()))
        }
        return checks
    }
}
