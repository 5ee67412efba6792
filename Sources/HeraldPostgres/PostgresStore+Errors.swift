package import HeraldCore
internal import PostgresNIO

// A database that cannot be reached, restarts, or refuses connections is a passing outage:
// the client is told `unavailable` (503, Retry-After) and may retry, not `internal`.

extension PSQLError: HeraldErrorConvertible {
    package var heraldError: HeraldError? {
        switch code {
        case .connectionError, .serverClosedConnection, .uncleanShutdown, .poolClosed:
            return Self.unavailable(self)
        case .clientClosedConnection:
            // Closed here: the call ran past `postgres-query-timeout` (a silent connection).
            return Self.unavailable(self)
        case .server:
            // Class 08 (connection exception), 57P01-57P03 (shutting down, starting up) and
            // 53300 (too many connections).
            guard let state = serverInfo?[.sqlState] else { return nil }
            let passing = state.hasPrefix("08") || ["57P01", "57P02", "57P03", "53300"].contains(state)
            return passing ? Self.unavailable(self) : nil
        default:
            return nil
        }
    }

    private static func unavailable(_ error: PSQLError) -> HeraldError {
        HeraldError(.unavailable, "the database is unavailable; retry shortly", cause: error, retryAfter: 1)
    }
}

extension PostgresTransactionError: HeraldErrorConvertible {
    package var heraldError: HeraldError? {
        // A failed COMMIT may have committed: that is not for a client to retry blindly, but a
        // lost connection at COMMIT still means the database is unavailable.
        let cause = closureError ?? beginError ?? commitError
        return cause.flatMap { HeraldError($0) }
    }
}
