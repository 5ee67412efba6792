internal import HeraldCore
package import HeraldHub
package import HeraldRunner
package import HeraldStore
package import Hummingbird
package import Logging

/// The REST API and the polling transports, registered on a Hummingbird router.
///
/// Handlers are thin: validate everything first (so a rejected request writes nothing),
/// call the ``Store``, publish what it committed to the ``Hub``, hand new checks to the
/// ``CheckRunner``, and render. Each resource lives in its own file as an extension.
package struct HeraldAPI: Sendable {
    let store: any Store
    let hub: Hub
    let runner: CheckRunner
    let resolver: TargetResolver
    let configuration: HTTPConfiguration
    let logger: Logger

    package init(
        store: any Store,
        hub: Hub,
        runner: CheckRunner,
        resolver: TargetResolver,
        configuration: HTTPConfiguration,
        logger: Logger
    ) {
        self.store = store
        self.hub = hub
        self.runner = runner
        self.resolver = resolver
        self.configuration = configuration
        self.logger = logger
    }

    /// Adds every API route under `/api/v1` and the health routes to `router`.
    package func register<Context: RequestContext>(on router: Router<Context>) {
        router.add(middleware: ProblemMiddleware(logger: logger))
        registerChecks(on: router)
        registerChannels(on: router)
        router.get("/healthz") { _, _ in jsonResponse(.ok, #"{"status":"ok"}"#) }
        router.get("/readyz") { _, _ in
            do {
                try await store.ping()
            } catch {
                throw HeraldError(.unavailable, "the store is not reachable")
            }
            return jsonResponse(.ok, #"{"status":"ready"}"#)
        }
    }

    /// Runs `operation`, cancelling it as soon as the client closes its connection, so a
    /// held long poll costs nothing once nobody waits for it.
    func whileConnected<Value: Sendable>(
        _ request: Request,
        _ operation: () async throws -> Value
    ) async throws
        -> Value
    {
        try await request.body.consumeWithCancellationOnInboundClose { _ in try await operation() }
    }
}
