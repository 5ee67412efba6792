package import HeraldCore
internal import PostgresNIO

/// A node of the cluster as `GET /api/v1/cluster` shows it.
package struct NodeRecord: Sendable, Hashable {
    package var id: String
    package var startedAt: Timestamp
    package var heartbeatAt: Timestamp
    package var version: String
    package var address: String

    package init(id: String, startedAt: Timestamp, heartbeatAt: Timestamp, version: String, address: String) {
        self.id = id
        self.startedAt = startedAt
        self.heartbeatAt = heartbeatAt
        self.version = version
        self.address = address
    }
}

/// The database's clock in milliseconds: heartbeats and leases are read and written by it, so
/// the nodes' own clocks may disagree.
private let databaseNow = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint"

extension PostgresStore {
    /// Records that this node is alive now, by the database's clock (its row is made at the
    /// first beat; nodes silent for an hour are forgotten).
    package func heartbeat(startedAt: Timestamp, version: String, address: String) async throws {
        try await withConnection { connection in
            try await connection.query(
                """
                INSERT INTO nodes (id, started_at, heartbeat_at, version, address)
                VALUES (\(self.node), \(startedAt.millisecondsSince1970), \(unescaped: databaseNow), \(version), \(address))
                ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at, address = EXCLUDED.address
                """,
                logger: self.logger
            )
            try await connection.query(
                "DELETE FROM nodes WHERE heartbeat_at < \(unescaped: databaseNow) - 3600000",
                logger: self.logger
            )
        }
    }

    /// The nodes that beat within `within`, oldest first.
    package func nodes(beatWithin within: Duration) async throws -> [NodeRecord] {
        try await withConnection { connection in
            let rows = try await connection.query(
                """
                SELECT id, started_at, heartbeat_at, version, address FROM nodes
                WHERE heartbeat_at >= \(unescaped: databaseNow) - \(within.milliseconds) ORDER BY started_at, id
                """,
                logger: self.logger
            )
            var nodes: [NodeRecord] = []
            for try await (id, started, beat, version, address) in rows.decode(
                (String, Int64, Int64, String, String).self
            ) {
                nodes.append(
                    NodeRecord(
                        id: id,
                        startedAt: Timestamp(millisecondsSince1970: started),
                        heartbeatAt: Timestamp(millisecondsSince1970: beat),
                        version: version,
                        address: address
                    )
                )
            }
            return nodes
        }
    }

    /// Makes this node the runner of up to `limit` processing checks whose node has been silent
    /// for `silence` (or that have none), and returns them: a `delay` check keeps its deadline
    /// and an `external` one its timeout, as at a restart. Take-overs run one at a time across
    /// the cluster (an advisory lock), each on a fresh view of the heartbeats, so a check is
    /// taken by one node.
    package func takeOverChecks(silentFor silence: Duration, limit: Int) async throws -> [Check] {
        try await transaction { connection in
            try await connection.query("SELECT pg_advisory_xact_lock(\(Self.takeOverLock))", logger: self.logger)
            let rows = try await connection.query(
                """
                WITH orphans AS (
                  SELECT seq FROM checks
                  WHERE state = 'processing' AND node IS DISTINCT FROM \(self.node)
                    AND (node IS NULL OR NOT EXISTS
                          (SELECT 1 FROM nodes WHERE nodes.id = checks.node
                             AND heartbeat_at >= \(unescaped: databaseNow) - \(silence.milliseconds)))
                  ORDER BY seq LIMIT \(limit) FOR UPDATE SKIP LOCKED)
                UPDATE checks SET node = \(self.node) FROM orphans WHERE checks.seq = orphans.seq
                RETURNING checks.seq, \(unescaped: Self.qualifiedCheckColumns)
                """,
                logger: self.logger
            )
            return try await Self.checks(in: rows).map(\.check)
        }
    }

    /// The advisory lock take-overs run under.
    static let takeOverLock: Int64 = migrationLock + 1

    /// Takes or renews the lease `name` for this node for `duration` (by the database's clock),
    /// unless another node holds it. - Returns: whether this node holds it.
    package func acquireLease(_ name: String, for duration: Duration) async throws -> Bool {
        try await withConnection { connection in
            let rows = try await connection.query(
                """
                INSERT INTO leases (name, node, until)
                VALUES (\(name), \(self.node), \(unescaped: databaseNow) + \(duration.milliseconds))
                ON CONFLICT (name) DO UPDATE SET node = EXCLUDED.node, until = EXCLUDED.until
                WHERE leases.node = EXCLUDED.node OR leases.until < \(unescaped: databaseNow)
                RETURNING node
                """,
                logger: self.logger
            )
            var held = false
            for try await _ in rows.decode(String.self) { held = true }
            return held
        }
    }
}
