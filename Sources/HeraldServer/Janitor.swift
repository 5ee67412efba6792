internal import HeraldCore
internal import HeraldStore
internal import Logging
internal import ServiceLifecycle

/// Removes what is past its retention, and disables the webhook subscriptions past their lag
/// cap, every `janitor-interval` (a minute by default).
struct Janitor: Service {
    let store: any Store
    let logger: Logger
    var interval: Duration
    var lagCap: LagCap
    /// Whether this node runs the pass now (in a cluster, one node at a time does).
    var mayRun: @Sendable () async -> Bool

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    guard await mayRun() else {
                        try? await Task.sleep(for: interval)
                        continue
                    }
                    for lagging in try await store.disableLagging(beyond: lagCap, at: .now()) {
                        logger.warning(
                            "webhook subscription disabled: it fell too far behind",
                            metadata: [
                                "herald.subscription": "\(lagging.id)", "herald.reason": "\(lagging.reason.rawValue)",
                                "herald.waiting": "\(lagging.events)",
                                "herald.oldest": "\(lagging.oldest?.rfc3339 ?? "-")",
                            ]
                        )
                    }
                    let removed = try await store.prune(now: .now())
                    if removed > 0 { logger.debug("pruned", metadata: ["herald.rows": "\(removed)"]) }
                } catch is CancellationError {
                    return
                } catch {
                    logger.warning("pruning failed", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}
