package import HeraldCore
internal import HeraldStore
internal import PostgresNIO

extension PostgresStore: Store {
    /// Rows one of the janitor's deletes removes at most, so none holds its locks for long.
    static let pruneBatchRows = 1_000

    package func prune(now: Timestamp) async throws -> Int {
        let millis = now.millisecondsSince1970
        let eventCutoff = millis - retention.maxEventAge.milliseconds
        let checkCutoff = millis - retention.checkRetention.milliseconds
        let keyCutoff = millis - retention.idempotencyKeyLifetime.milliseconds
        let rows = Self.pruneBatchRows
        // Each runs again until it deletes less than its batch; each batch is its own
        // transaction. Ended checks past retention go with their whole channel (its events
        // cascade); a check channel keeps its history while the check is kept.
        let deletions: [[PostgresQuery]] = [
            [
                """
                WITH ended AS (SELECT id FROM checks WHERE state <> 'processing' AND completed_at < \(checkCutoff)
                               ORDER BY completed_at LIMIT \(rows) FOR UPDATE SKIP LOCKED),
                channels_gone AS (DELETE FROM channels WHERE name IN (SELECT 'check:' || id FROM ended))
                DELETE FROM checks WHERE id IN (SELECT id FROM ended)
                """
            ],
            [
                """
                DELETE FROM events WHERE (channel, "offset") IN
                  (SELECT channel, "offset" FROM events WHERE time < \(eventCutoff) AND channel NOT LIKE 'check:%'
                   ORDER BY time LIMIT \(rows) FOR UPDATE SKIP LOCKED)
                """
            ],
            [
                """
                DELETE FROM channels WHERE updated_at < \(eventCutoff) AND name IN
                  (SELECT name FROM channels WHERE updated_at < \(eventCutoff) AND name NOT LIKE 'check:%'
                     AND NOT EXISTS (SELECT 1 FROM events WHERE events.channel = channels.name)
                   ORDER BY updated_at LIMIT \(rows) FOR UPDATE SKIP LOCKED)
                  AND NOT EXISTS (SELECT 1 FROM events WHERE events.channel = channels.name)
                """
            ],
            [
                """
                DELETE FROM idempotency_keys WHERE created_at < \(keyCutoff) AND key IN
                  (SELECT key FROM idempotency_keys WHERE created_at < \(keyCutoff) ORDER BY created_at LIMIT \(rows)
                   FOR UPDATE SKIP LOCKED)
                """
            ],
            // The delivery log is kept as long as ended checks are; pending deliveries stay.
            [
                """
                DELETE FROM deliveries WHERE state <> 'pending' AND updated_at < \(checkCutoff) AND seq IN
                  (SELECT seq FROM deliveries WHERE state <> 'pending' AND updated_at < \(checkCutoff)
                   ORDER BY updated_at LIMIT \(rows) FOR UPDATE SKIP LOCKED)
                """
            ],
            // The webhook event log is kept until every active subscription has read it.
            [
                """
                DELETE FROM webhook_events WHERE seq IN
                  (SELECT seq FROM webhook_events WHERE seq <= COALESCE(
                     (SELECT MIN(cursor) FROM subscriptions WHERE disabled_at IS NULL), 9223372036854775807)
                   ORDER BY seq LIMIT \(rows))
                """
            ],
            [
                "DELETE FROM parked_targets WHERE target IN (SELECT target FROM parked_targets WHERE until < \(millis) LIMIT \(rows))"
            ],
        ]
        var removed = 0
        for deletion in deletions {
            while true {
                let deleted = try await transaction { connection in
                    var deleted = 0
                    for query in deletion {
                        let result = try await connection.query(query, logger: self.logger).get()
                        deleted += result.metadata.rows ?? 0
                    }
                    return deleted
                }
                removed += deleted
                if deleted < rows { break }
                try Task.checkCancellation()
            }
        }
        return removed
    }
}
