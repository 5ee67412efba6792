package import HeraldAccess
internal import HeraldCore
package import HeraldHub
package import HeraldRunner
package import HeraldStore
package import Hummingbird
package import Logging

/// The REST API and the polling transports, registered on a Hummingbird router.
///
/// Handlers are thin: validate everything first (so a rejected request writes nothing),
/// read the ``Store`` or write through the ``EventLog`` (which announces what it committed),
/// hand new checks to the ``CheckService``, and render. Each resource lives in its own file as
/// an extension.
package struct HeraldAPI: Sendable {
    let store: any Store
    let events: EventLog
    let hub: Hub
    let checks: CheckService
    let access: Access
    let configuration: HTTPConfiguration
    let logger: Logger
    /// Whether the node is ready beyond its store (a cluster node: its notification connection).
    let isReady: @Sendable () -> Bool
    /// The cluster's nodes as JSON (`GET /api/v1/cluster`).
    let nodes: @Sendable () async throws -> String

    package init(
        store: any Store,
        events: EventLog,
        hub: Hub,
        checks: CheckService,
        access: Access,
        configuration: HTTPConfiguration,
        logger: Logger,
        isReady: @escaping @Sendable () -> Bool = { true },
        nodes: @escaping @Sendable () async throws -> String = { #"{"nodes":[]}"# }
    ) {
        self.isReady = isReady
        self.nodes = nodes
        self.store = store
        self.events = events
        self.hub = hub
        self.checks = checks
        self.access = access
        self.configuration = configuration
        self.logger = logger
    }

    /// Adds every API route under `/api/v1` and the health routes to `router`.
    package func register<Context: RequestContext & RemoteAddressRequestContext>(on router: Router<Context>) {
        router.add(middleware: CrossOrigin(allowed: configuration.allowedOrigins))
        router.add(middleware: ProblemMiddleware(logger: logger))
        registerChecks(on: router)
        registerChannels(on: router)
        registerWebhooks(on: router)
        router.get("/healthz") { _, _ in jsonResponse(.ok, #"{"status":"ok"}"#) }
        router.get("/readyz") { _, _ in
            // First what needs no round trip: a node that lost its notification connection
            // answers at once, even while its pooled connections hang on a silent network.
            guard isReady() else {
                throw HeraldError(
                    .unavailable,
                    "the node does not hear from the other nodes yet (no notification connection)"
                )
            }
            do {
                try await store.ping()
            } catch {
                throw HeraldError(.unavailable, "the store is not reachable")
            }
            return jsonResponse(.ok, #"{"status":"ready"}"#)
        }
        router.get("/api/v1/cluster") { request, _ in
            try await requireServer(request)
            return jsonResponse(.ok, try await nodes())
        }
    }

    /// Runs a held long poll.
    ///
    /// It does not watch the client's connection: on Hummingbird's async path the only watcher
    /// (`consumeWithInboundCloseHandler`) closes the connection after every answer, which
    /// turned each poll into a new TCP connection and cost 5x in p99 latency and 15 KiB per
    /// held poll (docs/benchmarks.md). A poll whose client left is instead bounded by its
    /// `wait` (at most `max-wait`): it holds one parked waiter until then, and its answer
    /// fails to write. Server shutdown still ends every held poll at once (see ``Hub``).
    func heldPoll<Value: Sendable>(_ operation: () async throws -> Value) async throws -> Value {
        try await operation()
    }
}
