package import Foundation
internal import GRDB
package import HeraldCore
package import HeraldStore
internal import Synchronization

/// The embedded store: one SQLite file in WAL mode under the data directory.
///
/// GRDB's `DatabasePool` gives one writer connection and several reader connections on
/// their own threads: writes are serialized (the "one writer path"), and reads see the last
/// committed state without waiting for a write in progress. No call blocks a NIO event loop.
package final class SQLiteStore: Store {
    let pool: DatabasePool
    let directory: URL
    let durability: Durability
    private let retention: RetentionConfiguration
    /// Writes of this process that queued webhook work (see ``localQueueings``).
    private let queueings = Atomic<Int>(0)

    /// Opens (creating if needed) `herald.sqlite` in `directory` and migrates it.
    ///
    /// - Throws: ``HeraldError`` `.unavailable` when the directory or file cannot be used.
    package init(directory: URL, retention: RetentionConfiguration, durability: Durability = .normal) throws {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw HeraldError(
                .unavailable,
                "cannot create data directory \(directory.path): \(error.localizedDescription)"
            )
        }
        var configuration = Configuration()
        configuration.label = "herald"
        // A reader never waits on the writer in WAL mode; the writer only waits on a checkpoint.
        configuration.busyMode = .timeout(5)
        configuration.maximumReaderCount = 4
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA foreign_keys = ON")
            // 8 MiB of pages per connection (the default is 2): the outbox's indexes are written
            // on every event, and pages read again from the OS cache cost a copy each.
            try db.execute(sql: "PRAGMA cache_size = -8192")
            db.add(function: Self.eventMatches)
        }
        do {
            pool = try DatabasePool(
                path: directory.appendingPathComponent("herald.sqlite").path,
                configuration: configuration
            )
            // After the pool is open: its WAL setup sets `synchronous = NORMAL` on the writer
            // connection once `prepareDatabase` has run, so a setting made there would not hold.
            // Only the writer commits, and it lives as long as the pool.
            try pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA synchronous = \(durability == .full ? "FULL" : "NORMAL")")
            }
            try Self.migrator.migrate(pool)
        } catch {
            throw HeraldError(.unavailable, "cannot open the SQLite store in \(directory.path): \(error)")
        }
        self.retention = retention
        self.directory = directory
        self.durability = durability
    }

    // MARK: Checks

    package func createCheck(_ check: Check, idempotency: IdempotencyKey?) async throws -> CheckCreation {
        let keyLifetime = retention.idempotencyKeyLifetime.milliseconds
        return try await writeQueueing { db, queued in
            if let idempotency,
                let row = try Row.fetchOne(
                    db,
                    sql: "SELECT fingerprint, check_id FROM idempotency_keys WHERE key = ? AND created_at > ?",
                    arguments: [idempotency.key, check.createdAt.millisecondsSince1970 - keyLifetime]
                )
            {
                guard row["fingerprint"] as String == idempotency.fingerprint else {
                    throw HeraldError.invalid("Idempotency-Key was already used with a different request body")
                }
                let id: String = row["check_id"]
                if let first = try Self.fetchCheck(db, id: id) { return CheckCreation(check: first, event: nil) }
            }
            try db.execute(
                sql: """
                    INSERT INTO checks (id, kind, params, state, result, error, version, created_at, updated_at,
                                        completed_at, callback_url, callback_secret, callback_events,
                                        owner_subject, cancel_digest)
                    VALUES (?, ?, ?, ?, NULL, NULL, ?, ?, ?, NULL, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    check.id.rawValue, check.spec.kind.rawValue, check.spec.paramsJSON.jsonText, check.state.rawValue,
                    check.version, check.createdAt.millisecondsSince1970, check.updatedAt.millisecondsSince1970,
                    check.spec.callbackURL, check.spec.callbackSecret, check.spec.callbackEvents.rawValue,
                    check.owner?.subject, check.owner?.cancelDigest,
                ]
            )
            if let idempotency {
                try db.execute(
                    sql:
                        "INSERT OR REPLACE INTO idempotency_keys (key, fingerprint, check_id, created_at) VALUES (?, ?, ?, ?)",
                    arguments: [
                        idempotency.key, idempotency.fingerprint, check.id.rawValue,
                        check.createdAt.millisecondsSince1970,
                    ]
                )
            }
            let event = try Self.append(
                db,
                type: "check.created",
                data: check.json,
                to: check.id.channel,
                at: check.createdAt,
                maxEvents: nil
            )
            queued = try Self.enqueueDeliveries(for: event, of: check, db)
            return CheckCreation(check: check, event: event)
        }
    }

    package func check(_ id: CheckID) async throws -> Check? {
        try await pool.read { db in try Self.fetchCheck(db, id: id.rawValue) }
    }

    package func checks(matching query: CheckQuery) async throws -> CheckPage {
        let (sql, arguments) = try Self.newestFirst(
            from: "checks",
            where: [("state", query.state?.rawValue), ("kind", query.kind?.rawValue)],
            cursor: query.cursor,
            limit: query.limit
        )
        return try await pool.read { db in
            let (page, next) = Self.page(try Row.fetchAll(db, sql: sql, arguments: arguments), limit: query.limit)
            return CheckPage(checks: try page.map(Self.check(from:)), nextCursor: next)
        }
    }

    package func processingChecks(after cursor: ProcessingCursor?, limit: Int) async throws -> ProcessingPage {
        try await pool.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: "SELECT * FROM checks WHERE state = 'processing' AND seq > ? ORDER BY seq LIMIT ?",
                arguments: [cursor?.sequence ?? 0, limit]
            )
            let next = rows.count == limit ? rows.last.map { ProcessingCursor(sequence: $0["seq"]) } : nil
            return ProcessingPage(checks: try rows.map(Self.check(from:)), next: next)
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
        try await writeQueueing { db, queued in
            guard let current = try Self.fetchCheck(db, id: id.rawValue) else { return .notFound }
            if let refusal = CheckFinish.refusal(of: current, requiring: condition) { return refusal }
            let next = current.finished(state, result: result, error: error, at: time)
            try db.execute(
                sql: """
                    UPDATE checks SET state = ?, result = ?, error = ?, version = ?, updated_at = ?, completed_at = ?
                    WHERE id = ? AND version = ?
                    """,
                arguments: [
                    next.state.rawValue, next.result?.jsonText, next.error?.jsonText, next.version,
                    time.millisecondsSince1970, time.millisecondsSince1970, id.rawValue, current.version,
                ]
            )
            let event = try Self.append(
                db,
                type: state.eventType,
                data: next.json,
                to: id.channel,
                at: time,
                maxEvents: nil
            )
            queued = try Self.enqueueDeliveries(for: event, of: next, db)
            return .finished(next, event)
        }
    }

    // MARK: Channels

    package func append(type: String, data: String, to channel: ChannelName, at time: Timestamp) async throws -> Event {
        let maxEvents = retention.maxEventsPerChannel
        return try await writeQueueing { db, queued in
            let event = try Self.append(db, type: type, data: data, to: channel, at: time, maxEvents: maxEvents)
            queued = try Self.enqueueDeliveries(for: event, of: nil, db)
            return event
        }
    }

    /// A write that may queue webhook work, counted in ``localQueueings`` once it committed (a
    /// dispatcher that read the queue before the commit must see the count move after it).
    private func writeQueueing<Value: Sendable>(
        _ body: @escaping @Sendable (Database, inout Bool) throws -> Value
    ) async throws -> Value {
        let (value, queued) = try await pool.write { db in
            var queued = false
            let value = try body(db, &queued)
            return (value, queued)
        }
        if queued { queueings.add(1, ordering: .releasing) }
        return value
    }

    package var localQueueings: Int? { queueings.load(ordering: .acquiring) }

    package func events(
        in channel: ChannelName,
        after offset: Offset?,
        epoch: Epoch?,
        limit: Int
    ) async throws
        -> EventRead
    {
        try await pool.read { db in
            guard
                let row = try Row.fetchOne(
                    try db.cachedStatement(sql: "SELECT epoch, last_offset FROM channels WHERE name = ?"),
                    arguments: [channel.rawValue]
                )
            else {
                // No history yet: any position at 0 (or "now") is current; anything else is lost.
                let lost = (offset ?? 0) != 0
                return EventRead(epoch: Epoch(""), recovered: !lost, events: [], next: 0)
            }
            let current = Epoch(row["epoch"])
            let last: Offset = row["last_offset"]
            guard let offset else { return EventRead(epoch: current, recovered: true, events: [], next: last) }
            let first: Offset =
                try Offset.fetchOne(
                    try db.cachedStatement(sql: "SELECT MIN(offset) FROM events WHERE channel = ?"),
                    arguments: [channel.rawValue]
                ) ?? (last + 1)
            let epochMatches = current.accepts(epoch)
            if epochMatches && offset >= first - 1 && offset <= last {
                let events = try Self.fetchEvents(db, channel, epoch: current, after: offset, limit: limit)
                return EventRead(epoch: current, recovered: true, events: events, next: events.last?.offset ?? offset)
            }
            // The position is gone. A check channel's latest event carries the full check.
            let events =
                channel.isCheckChannel
                ? try Self.fetchEvents(db, channel, epoch: current, after: last - 1, limit: 1)
                : try Self.fetchEvents(db, channel, epoch: current, after: first - 1, limit: limit)
            return EventRead(epoch: current, recovered: false, events: events, next: events.last?.offset ?? last)
        }
    }

    /// How long one of the janitor's writes should hold the writer: a publish that arrives
    /// meanwhile waits for the rest of it. Deleting costs about 0.05-0.2 ms a row here (random
    /// ids scatter it over the indexes, cascades multiply it; docs/benchmarks.md), so a fixed
    /// number of rows would hold the writer for tens of milliseconds on one table and
    /// microseconds on another: each batch's rows are adjusted to the time the last one took.
    static let pruneBatchTime: Duration = .milliseconds(4)
    /// The first batch's rows, and the bounds the adjustment keeps to.
    static let pruneBatchRows = (first: 64, least: 8, most: 2_000)

    package func prune(now: Timestamp) async throws -> Int {
        let eventCutoff = now.millisecondsSince1970 - retention.maxEventAge.milliseconds
        let checkCutoff = now.millisecondsSince1970 - retention.checkRetention.milliseconds
        let keyCutoff = now.millisecondsSince1970 - retention.idempotencyKeyLifetime.milliseconds
        // Each deletes at most `?2` rows, oldest first, through an index that holds only what
        // may go; each runs again until it deletes less than its batch.
        let deletions: [(statements: [String], cutoff: Int64)] = [
            // Ended checks past retention go with their whole channel (its events cascade).
            (
                [
                    """
                    DELETE FROM channels WHERE name IN
                      (SELECT 'check:' || id FROM checks INDEXED BY checks_completed
                       WHERE state != 'processing' AND completed_at < ?1 ORDER BY completed_at LIMIT ?2)
                    """,
                    """
                    DELETE FROM checks WHERE seq IN
                      (SELECT seq FROM checks INDEXED BY checks_completed
                       WHERE state != 'processing' AND completed_at < ?1 ORDER BY completed_at LIMIT ?2)
                    """,
                ], checkCutoff
            ),
            // A check channel keeps its history while the check is kept: it is the snapshot.
            (
                [
                    """
                    DELETE FROM events WHERE (channel, offset) IN
                      (SELECT channel, offset FROM events INDEXED BY events_expiring
                       WHERE time < ?1 AND channel NOT LIKE 'check:%' ORDER BY time LIMIT ?2)
                    """
                ], eventCutoff
            ),
            (
                [
                    """
                    DELETE FROM channels WHERE name IN
                      (SELECT name FROM channels INDEXED BY channels_expiring
                       WHERE updated_at < ?1 AND name NOT LIKE 'check:%'
                         AND NOT EXISTS (SELECT 1 FROM events WHERE events.channel = channels.name)
                       ORDER BY updated_at LIMIT ?2)
                    """
                ], eventCutoff
            ),
            (
                [
                    """
                    DELETE FROM idempotency_keys WHERE key IN
                      (SELECT key FROM idempotency_keys WHERE created_at < ?1 ORDER BY created_at LIMIT ?2)
                    """
                ], keyCutoff
            ),
            // The delivery log is kept as long as ended checks are; pending deliveries stay.
            (
                [
                    """
                    DELETE FROM deliveries WHERE seq IN
                      (SELECT seq FROM deliveries INDEXED BY deliveries_ended
                       WHERE state != 'pending' AND updated_at < ?1 ORDER BY updated_at LIMIT ?2)
                    """
                ], checkCutoff
            ),
            // The webhook event log is kept until every active subscription has read it.
            (
                [
                    """
                    DELETE FROM webhook_events WHERE seq IN
                      (SELECT seq FROM webhook_events WHERE seq <= COALESCE(
                         (SELECT MIN(cursor) FROM subscriptions WHERE disabled_at IS NULL), 9223372036854775807)
                       ORDER BY seq LIMIT ?2)
                    """
                ], 0
            ),
            // A target parked until a time now past has nothing parked any more.
            (
                [
                    "DELETE FROM parked_targets WHERE target IN (SELECT target FROM parked_targets WHERE until < ?1 LIMIT ?2)"
                ],
                now.millisecondsSince1970
            ),
        ]
        var removed = 0
        var rows = Self.pruneBatchRows.first
        for deletion in deletions {
            while true {
                // One short write per batch: writes waiting for the writer go in between (the
                // writer serves them in order, and the next batch queues behind them).
                // Timed inside the write, commit included (and the WAL checkpoint a commit may
                // run): the wait for the writer is not the batch's cost, but all the rest is.
                let (deleted, took) = try await pool.writeWithoutTransaction { [rows] db in
                    let started = ContinuousClock.now
                    var deleted = 0
                    try db.inTransaction {
                        for sql in deletion.statements {
                            try db.execute(sql: sql, arguments: [deletion.cutoff, rows])
                        }
                        deleted = db.changesCount
                        return .commit
                    }
                    return (deleted, ContinuousClock.now - started)
                }
                removed += deleted
                if deleted < rows { break }
                rows = Self.nextBatchRows(after: rows, took: took)
                try Task.checkCancellation()
            }
        }
        return removed
    }

    /// The rows of the next batch: twice as many after a batch well under
    /// ``pruneBatchTime``, half as many after one over it, within ``pruneBatchRows``.
    static func nextBatchRows(after rows: Int, took: Duration) -> Int {
        let bounds = pruneBatchRows
        if took > pruneBatchTime { return max(bounds.least, rows / 2) }
        if took < pruneBatchTime / 2 { return min(bounds.most, rows * 2) }
        return rows
    }

    package func ping() async throws {
        _ = try await pool.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }

    // MARK: Rows

    /// `SELECT * FROM table`, newest first: the filters whose value is set, rows before
    /// `cursor`, and one row more than `limit` (see ``page(_:limit:)``).
    static func newestFirst(
        from table: String,
        where filters: [(column: String, value: String?)],
        cursor: String?,
        limit: Int
    ) throws -> (sql: String, arguments: StatementArguments) {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        for case (let column, let value?) in filters {
            conditions.append("\(column) = ?")
            _ = arguments.append(contentsOf: [value])
        }
        if cursor != nil {
            conditions.append("seq < ?")
            _ = arguments.append(contentsOf: [try PageCursor.sequence(of: cursor)])
        }
        _ = arguments.append(contentsOf: [limit + 1])
        let whereClause = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        return ("SELECT * FROM \(table) \(whereClause) ORDER BY seq DESC LIMIT ?", arguments)
    }

    /// A page of `limit` rows fetched with `LIMIT limit + 1`, and the cursor of the next page
    /// (the last row's `seq` in base 36) when the extra row shows there is one.
    static func page(_ rows: [Row], limit: Int) -> (rows: ArraySlice<Row>, next: String?) {
        let page = rows.prefix(limit)
        return (page, rows.count > limit ? page.last.map { PageCursor.cursor(after: $0["seq"]) } : nil)
    }

    private static func append(
        _ db: Database,
        type: String,
        data: String,
        to channel: ChannelName,
        at time: Timestamp,
        maxEvents: Int?
    ) throws -> Event {
        let epoch: Epoch
        let offset: Offset
        // Runs for every event: the prepared statements are kept, not compiled each time.
        if let row = try Row.fetchOne(
            try db.cachedStatement(sql: "SELECT epoch, last_offset FROM channels WHERE name = ?"),
            arguments: [channel.rawValue]
        ) {
            epoch = Epoch(row["epoch"])
            offset = (row["last_offset"] as Offset) + 1
            try db.cachedStatement(sql: "UPDATE channels SET last_offset = ?, updated_at = ? WHERE name = ?").execute(
                arguments: [offset, time.millisecondsSince1970, channel.rawValue]
            )
        } else {
            epoch = Epoch.random()
            offset = 1
            try db.cachedStatement(
                sql: "INSERT INTO channels (name, epoch, last_offset, updated_at) VALUES (?, ?, 1, ?)"
            ).execute(
                arguments: [channel.rawValue, epoch.rawValue, time.millisecondsSince1970]
            )
        }
        try db.cachedStatement(sql: "INSERT INTO events (channel, offset, type, time, data) VALUES (?, ?, ?, ?, ?)")
            .execute(
                arguments: [channel.rawValue, offset, type, time.millisecondsSince1970, data]
            )
        if let maxEvents, offset > Offset(maxEvents) {
            try db.cachedStatement(sql: "DELETE FROM events WHERE channel = ? AND offset <= ?").execute(
                arguments: [channel.rawValue, offset - Offset(maxEvents)]
            )
        }
        return Event(channel: channel, offset: offset, epoch: epoch, type: type, time: time, data: data)
    }

    private static func fetchEvents(
        _ db: Database,
        _ channel: ChannelName,
        epoch: Epoch,
        after offset: Offset,
        limit: Int
    ) throws -> [Event] {
        try Row.fetchAll(
            try db.cachedStatement(
                sql:
                    "SELECT offset, type, time, data FROM events WHERE channel = ? AND offset > ? ORDER BY offset LIMIT ?"
            ),
            arguments: [channel.rawValue, offset, limit]
        ).map { row in
            Event(
                channel: channel,
                offset: row["offset"],
                epoch: epoch,
                type: row["type"],
                time: Timestamp(millisecondsSince1970: row["time"]),
                data: row["data"]
            )
        }
    }

    private static func fetchCheck(_ db: Database, id: String) throws -> Check? {
        try Row.fetchOne(db, sql: "SELECT * FROM checks WHERE id = ?", arguments: [id]).map(check(from:))
    }

    private static func check(from row: Row) throws -> Check {
        try CheckRow(
            id: row["id"],
            kind: row["kind"],
            params: row["params"],
            state: row["state"],
            result: row["result"],
            error: row["error"],
            version: row["version"],
            createdAt: row["created_at"],
            updatedAt: row["updated_at"],
            completedAt: row["completed_at"],
            callbackURL: row["callback_url"],
            callbackSecret: row["callback_secret"],
            callbackEvents: row["callback_events"] ?? "terminal",
            callbackStopped: row["callback_stopped"],
            ownerSubject: row["owner_subject"],
            cancelDigest: row["cancel_digest"]
        ).check()
    }
}
