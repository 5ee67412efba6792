internal import Foundation
internal import HeraldCore
package import HeraldStore
package import Logging
internal import NIOCore
package import PostgresNIO
internal import Synchronization

/// The store of a cluster: every node's PostgreSQL connection pool on one database.
///
/// The database decides everything that must be decided once: a channel's next offset (its
/// `channels` row is locked by the append, so offsets commit in order, with no gap and no
/// duplicate, whichever node appends), which finish of a check wins, which node holds a lease.
/// An answer is given only after its transaction committed. The pool (postgres-nio's
/// `PostgresClient`) runs as long as ``run()`` does: start it before the first call.
package final class PostgresStore: Sendable {
    let client: PostgresClient
    let retention: RetentionConfiguration
    let logger: Logger
    /// This node's id: the checks it creates are its to run (see ``processingChecks(after:limit:)``).
    package let node: String
    /// The schema the tables live in, created by ``migrate()`` if missing (`nil`: the default).
    let schema: String?

    /// How long a store call may hold its connection (`postgres-query-timeout`).
    let queryTimeout: Duration

    /// A pool on `configuration`, not yet connected (see ``run()``).
    /// - Parameter queryTimeout: how long a store call may run on its connection; past it the
    ///   connection is closed (a query on a connection whose path went silent would otherwise
    ///   wait until the kernel gives up on it) and the call fails `unavailable`.
    package init(
        configuration: PostgresClient.Configuration,
        retention: RetentionConfiguration,
        node: String = "node",
        schema: String? = nil,
        queryTimeout: Duration = .seconds(30),
        logger: Logger
    ) {
        self.queryTimeout = max(queryTimeout, Self.leaseTimeout + .seconds(1))
        // The pool tells every failed connection attempt at `info`, ten a second while the
        // database is down: the outage is told by the requests' 503s and `/readyz` instead.
        var background = logger
        if background.logLevel > .debug { background.logLevel = .warning }
        self.client = PostgresClient(configuration: configuration, backgroundLogger: background)
        self.retention = retention
        self.node = node
        self.schema = schema
        self.logger = logger
    }

    /// Keeps the pool's connections until cancelled.
    package func run() async {
        await client.run()
    }

    /// Creates or upgrades the schema (see ``migrations``). Several nodes starting at once
    /// take turns: each migration runs under a transaction-scoped advisory lock.
    package func migrate() async throws {
        try await withConnection { connection in try await self.migrate(connection) }
    }

    private func migrate(_ connection: PostgresConnection) async throws {
        try await connection.withTransaction(logger: logger) { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: logger)
            if let schema {
                let quoted = "\"" + schema.replacingOccurrences(of: "\"", with: "\"\"") + "\""
                try await connection.query("CREATE SCHEMA IF NOT EXISTS \(unescaped: quoted)", logger: logger)
            }
            try await connection.query(
                "CREATE TABLE IF NOT EXISTS herald_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at bigint NOT NULL)",
                logger: logger
            )
            var applied: Set<Int> = []
            for try await version in try await connection.query("SELECT version FROM herald_migrations", logger: logger)
                .decode(Int.self)
            {
                applied.insert(version)
            }
            for (index, migration) in Self.migrations.enumerated() where !applied.contains(index + 1) {
                for statement in migration.statements {
                    try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await connection.query(
                    """
                    INSERT INTO herald_migrations (version, name, applied_at)
                    VALUES (\(index + 1), \(migration.name), \(Timestamp.now().millisecondsSince1970))
                    """,
                    logger: logger
                )
            }
        }
    }

    /// The advisory lock migrations are taken under (any constant; "herald" in ASCII).
    static let migrationLock: Int64 = 0x68_6572_616c_64

    /// Runs `body` in a transaction; a serialization failure or deadlock is retried.
    func transaction<Value: Sendable>(
        _ body: @Sendable (PostgresConnection) async throws -> Value
    ) async throws -> Value {
        var attempt = 0
        while true {
            do {
                return try await withConnection { connection in
                    try await connection.withTransaction(logger: self.logger) { connection in try await body(connection)
                    }
                }
            } catch let error as PostgresTransactionError {
                attempt += 1
                // Never after a failed COMMIT: it may have committed.
                guard attempt < 5, let cause = error.closureError ?? error.beginError, Self.isRetryable(cause) else {
                    throw Self.unwrap(error)
                }
            }
        }
    }

    /// Runs `body`, which only reads, on one snapshot (`REPEATABLE READ READ ONLY`): its
    /// statements see the same committed state, whatever commits meanwhile.
    func snapshot<Value: Sendable>(_ body: @Sendable (PostgresConnection) async throws -> Value) async throws -> Value {
        try await withConnection { connection in
            try await connection.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", logger: self.logger)
            do {
                let value = try await body(connection)
                try await connection.query("COMMIT", logger: self.logger)
                return value
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: self.logger)
                throw error
            }
        }
    }

    /// A deadlock or a serialization failure: the transaction may simply run again.
    static func isRetryable(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError, let code = error.serverInfo?[.sqlState] else { return false }
        return code == "40001" || code == "40P01"
    }

    /// The error a caller should see: Herald's own when the closure threw one.
    static func unwrap(_ error: PostgresTransactionError) -> any Error {
        if let herald = error.closureError as? HeraldError { return herald }
        return error.closureError ?? error.beginError ?? error.commitError ?? error
    }

    /// How long a request waits for a pooled connection. The pool keeps trying a database that
    /// is down; a request does not wait with it, it is answered `unavailable` (a 503).
    static let leaseTimeout: Duration = .seconds(5)

    /// Runs `body` on a pooled connection. Waiting longer than ``leaseTimeout`` for one (the
    /// database is down, or every connection stays busy) throws `unavailable`, and `body` never
    /// runs; running past ``queryTimeout`` closes its connection, which fails it (`unavailable`).
    @discardableResult func withConnection<Value: Sendable>(
        _ body: @Sendable (PostgresConnection) async throws -> Value
    ) async throws -> Value {
        // The lease and the timer race for one state change: exactly one of them wins.
        let lease = Lease()
        return try await withoutActuallyEscaping(body) { body in
            try await withThrowingTaskGroup(of: Value?.self) { group in
                group.addTask {
                    try await self.client.withConnection { connection in
                        guard lease.take(connection) else { throw Self.noConnection }
                        defer { lease.end() }
                        return try await body(connection)
                    }
                }
                group.addTask {
                    try await Task.sleep(for: Self.leaseTimeout)
                    return nil
                }
                var watched = false
                while let next = try await group.next() {
                    if let value = next {
                        group.cancelAll()
                        return value
                    }
                    if lease.expire() {
                        group.cancelAll()
                        throw Self.noConnection
                    }
                    // Leased and still running (rare: a call takes milliseconds): watched until
                    // `queryTimeout`. A query is not cancelled by its task; closing its
                    // connection fails it, and the pool makes another.
                    guard !watched else { continue }
                    watched = true
                    group.addTask {
                        try await Task.sleep(for: self.queryTimeout - Self.leaseTimeout)
                        // Taken under the lock: a call that ended before is never closed (one
                        // ending right now may be; the pool then replaces its connection).
                        guard let connection = lease.connectionToClose() else { return nil }
                        self.logger.warning(
                            "a database call ran past postgres-query-timeout; closing its connection",
                            metadata: ["timeout": "\(self.queryTimeout)"]
                        )
                        try? await connection.close()
                        return nil
                    }
                }
                throw CancellationError()
            }
        }
    }

    static let noConnection = HeraldError(
        .unavailable,
        "no database connection within \(leaseTimeout); retry shortly",
        retryAfter: 1
    )

    package func ping() async throws {
        try await withConnection { connection in try await connection.query("SELECT 1", logger: self.logger) }
    }
}

extension PostgresStore {
    /// Sends `payload` to every connection listening on `channel` (`pg_notify`).
    package func notify(_ channel: String, _ payload: String) async throws {
        try await withConnection { connection in
            try await connection.query("SELECT pg_notify(\(channel), \(payload))", logger: self.logger)
        }
    }
}

/// Whether a request got its connection before its wait ran out: taken once, by one side.
private final class Lease: Sendable {
    /// 0 waiting, 1 leased, 2 expired.
    private let state = Atomic<UInt8>(0)
    private let leased = Mutex<PostgresConnection?>(nil)

    /// The connection of a call still running on it, taken away so that `end` finds nothing.
    func connectionToClose() -> PostgresConnection? { leased.withLock { $0.take() } }

    /// The connection came: true unless the wait ran out first.
    func take(_ connection: PostgresConnection) -> Bool {
        guard state.compareExchange(expected: 0, desired: 1, ordering: .relaxed).exchanged else { return false }
        leased.withLock { $0 = connection }
        return true
    }

    /// The call is done with its connection (it goes back to the pool: never close it then).
    func end() { leased.withLock { $0 = nil } }

    /// The wait ran out: true unless the connection came first.
    func expire() -> Bool { state.compareExchange(expected: 0, desired: 2, ordering: .relaxed).exchanged }
}
