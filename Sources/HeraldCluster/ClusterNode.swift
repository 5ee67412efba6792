package import HeraldCore
package import HeraldPostgres
package import Logging
internal import ServiceLifecycle

/// This node's part in the cluster: it beats (`nodes.heartbeat_at`) every `heartbeat`, and
/// takes over the processing checks of nodes silent for `silence` (handing them to its runner),
/// so a check whose node died is finished by another.
package struct ClusterNode: Service {
    let store: PostgresStore
    let startedAt: Timestamp
    let version: String
    /// Where this node serves (its HTTP base URL, once bound).
    let address: @Sendable () -> String
    let heartbeat: Duration
    let silence: Duration
    let logger: Logger
    /// How many more checks the runner can queue now: a take-over never takes more, and what
    /// it leaves stays with the silent node for the next beat (here or on another node).
    let room: @Sendable () -> Int
    let onTakeOver: @Sendable ([Check]) -> Void

    package init(
        store: PostgresStore,
        startedAt: Timestamp,
        version: String,
        address: @escaping @Sendable () -> String,
        heartbeat: Duration = .seconds(1),
        silence: Duration = .seconds(10),
        logger: Logger,
        room: @escaping @Sendable () -> Int = { .max },
        onTakeOver: @escaping @Sendable ([Check]) -> Void
    ) {
        self.room = room
        self.store = store
        self.startedAt = startedAt
        self.version = version
        self.address = address
        self.heartbeat = heartbeat
        self.silence = silence
        self.logger = logger
        self.onTakeOver = onTakeOver
    }

    package func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await beat()
                try? await Task.sleep(for: heartbeat)
            }
        }
    }

    /// Checks taken over in one page.
    static let page = 500

    /// One beat: the heartbeat, then the checks of silent nodes, a page at a time, as many as
    /// the runner has room for.
    func beat() async {
        do {
            try await store.heartbeat(startedAt: startedAt, version: version, address: address())
            while true {
                let limit = min(Self.page, room())
                guard limit > 0 else { break }
                let taken = try await store.takeOverChecks(silentFor: silence, limit: limit)
                if taken.isEmpty { break }
                logger.info("took over the checks of a silent node", metadata: ["herald.checks": "\(taken.count)"])
                onTakeOver(taken)
                if taken.count < limit { break }
            }
        } catch {
            logger.warning("heartbeat failed", metadata: ["error": "\(error)"])
        }
    }
}
