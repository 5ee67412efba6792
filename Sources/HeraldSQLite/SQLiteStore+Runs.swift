internal import Foundation
internal import GRDB
internal import HeraldCore
internal import HeraldStore

/// Runs: what keeps a position `(epoch, offset)` from ever naming two different events.
///
/// Offsets continue from the store's last committed event, so if the store loses its newest
/// commits, new events would reuse their offsets under the same epoch and a client holding
/// one would skip them. That happens in two ways, and each start looks for both:
///
/// - **A restore.** Every start writes its generation both in the store and in the file
///   `herald.generation` beside it (fsynced), and a clean stop marks both stopped. A store
///   whose generation is behind the file's, or that is still marked running when the file
///   says its run stopped cleanly (an online backup put back), was copied back from an
///   earlier time.
/// - **Lost commits.** With `durability: normal` a commit reaches the disk at the next
///   checkpoint, so an OS crash or power loss may drop the last ones (`kill -9` of Herald
///   does not: the OS still holds them). A start after a run that did not stop cleanly, on
///   another kernel boot, may have lost commits.
///
/// Then every channel gets a new epoch: clients resuming with an old one get
/// `recovered: false` and what is kept, so they know they may have missed events.
extension SQLiteStore {
    /// What ``beginRun(bootID:)`` found.
    package struct RunStart: Sendable {
        /// This run's generation (1 for a new store).
        package var generation: Int64
        /// Why every channel's epoch was renewed, or `nil` when positions were kept.
        package var renewedEpochs: String?
    }

    private var generationFile: URL { directory.appendingPathComponent("herald.generation") }

    /// Marks the start of a run, renewing every channel's epoch when the store may have lost
    /// or been rolled back over commits (see above). Call once, with the data directory locked.
    ///
    /// - Parameter bootID: the kernel's boot id (`/proc/sys/kernel/random/boot_id`), or `nil`
    ///   where there is none (then any unclean stop counts as a possible loss).
    /// - Throws: when the store or the generation file cannot be written.
    package func beginRun(bootID: String?) throws -> RunStart {
        let sidecar = Self.readSidecar(generationFile)
        let mayLoseCommits = durability == .normal
        let start = try pool.write { db -> RunStart in
            let meta = try Dictionary(
                Row.fetchAll(db, sql: "SELECT key, value FROM store_meta").map {
                    ($0["key"] as String, $0["value"] as String)
                },
                uniquingKeysWith: { first, _ in first }
            )
            let generation = meta["generation"].flatMap { Int64($0) } ?? 0
            var reason: String?
            if let sidecar, sidecar.generation > generation {
                reason =
                    "the store is older than its last run (generation \(generation), last run \(sidecar.generation)): restored from a copy"
            } else if let sidecar, sidecar.stopped, meta["running"] == "1" {
                reason = "the store is a copy taken while its last run was going on: restored from a copy"
            } else if meta["running"] == "1", mayLoseCommits, bootID == nil || meta["boot_id"] != bootID {
                reason = "the last run did not stop cleanly and the machine restarted since (durability: normal)"
            }
            if reason != nil {
                for name in try String.fetchAll(db, sql: "SELECT name FROM channels") {
                    try db.execute(
                        sql: "UPDATE channels SET epoch = ? WHERE name = ?",
                        arguments: [Epoch.random().rawValue, name]
                    )
                }
            }
            let next = max(generation, sidecar?.generation ?? 0) + 1
            for (key, value) in [("generation", String(next)), ("running", "1"), ("boot_id", bootID ?? "")] {
                try db.execute(
                    sql:
                        "INSERT INTO store_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    arguments: [key, value]
                )
            }
            return RunStart(generation: next, renewedEpochs: reason)
        }
        try Self.writeDurably("\(start.generation) running\n", to: generationFile)
        return start
    }

    /// The generation file: `<generation> running|stopped`.
    private static func readSidecar(_ url: URL) -> (generation: Int64, stopped: Bool)? {
        guard let text = try? String(contentsOf: url, encoding: .utf8) else { return nil }
        let words = text.split(whereSeparator: \.isWhitespace)
        guard let first = words.first, let generation = Int64(first) else { return nil }
        return (generation, words.dropFirst().first == "stopped")
    }

    /// Marks a clean stop: nothing was lost, so the next start keeps every epoch.
    package func endRun() async throws {
        try await pool.write { db in
            try db.execute(sql: "UPDATE store_meta SET value = '0' WHERE key = 'running'")
        }
        // A clean stop also checkpoints, so the commits are in the main file, not only the WAL.
        _ = try await pool.writeWithoutTransaction { db in try db.checkpoint(.truncate) }
        if let sidecar = Self.readSidecar(generationFile) {
            try Self.writeDurably("\(sidecar.generation) stopped\n", to: generationFile)
        }
    }

    /// Writes `text` to `url` through a temporary file, fsynced, then renamed over it.
    private static func writeDurably(_ text: String, to url: URL) throws {
        let temporary = url.appendingPathExtension("tmp")
        let descriptor = open(temporary.path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw HeraldError(.unavailable, "cannot write \(temporary.path)") }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        let synced = fsync(descriptor) == 0
        close(descriptor)
        guard written == bytes.count, synced, rename(temporary.path, url.path) == 0 else {
            throw HeraldError(.unavailable, "cannot write \(url.path)")
        }
    }
}
