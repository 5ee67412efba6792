internal import Foundation
internal import HeraldCluster
internal import HeraldCore
internal import HeraldHooks
internal import HeraldHub
internal import HeraldPostgres
internal import HeraldRunner
internal import HeraldSQLite
internal import HeraldStore
internal import Logging
internal import ServiceLifecycle

/// The store the configuration names, open and migrated, and what comes with it: the broker that
/// carries events to the hubs, the services a cluster node runs, and how the node stops.
struct Storage {
    let store: any Store
    /// When this node started, as `GET /api/v1/cluster` shows it.
    let startedAt: Timestamp
    /// The embedded store and its locked data directory, or a cluster node's store.
    private let kind: Kind

    private enum Kind {
        case sqlite(SQLiteStore, DataDirectoryLock)
        case postgres(PostgresStore, PostgresURL, pool: Task<Void, Never>)
    }

    /// Opens the store. A PostgreSQL store's pool starts here, for the migrations.
    /// - Throws: ``ConfigurationError`` when the store cannot be used.
    static func open(_ configuration: HeraldConfiguration, logger: Logger) async throws -> Storage {
        switch configuration.store {
        case .sqlite:
            let directory = URL(fileURLWithPath: configuration.dataDirectory, isDirectory: true)
            let lock = try DataDirectoryLock(directory: directory)
            do {
                let store = try SQLiteStore(
                    directory: directory,
                    retention: configuration.retention,
                    durability: configuration.durability
                )
                let start = try store.beginRun(bootID: HeraldServer.bootID())
                if let reason = start.renewedEpochs {
                    logger.warning("every channel starts a new epoch: \(reason)")
                }
                return Storage(store: store, startedAt: .now(), kind: .sqlite(store, lock))
            } catch let error as HeraldError {
                throw ConfigurationError(message: error.message)
            }
        case .postgres(let text):
            let url: PostgresURL
            do {
                url = try PostgresURL(text)
            } catch {
                throw ConfigurationError(message: error.message)
            }
            let store = PostgresStore(
                configuration: url.client(connections: configuration.postgresPoolSize),
                retention: configuration.retention,
                node: configuration.nodeID,
                schema: url.searchPath,
                logger: logger.labelled("herald.postgres")
            )
            let startedAt = Timestamp.now()
            let pool = Task { await store.run() }
            await Task.yield()  // the pool runs before the first query asks it for a connection
            do {
                try await store.migrate()
                // Beat before serving: a check this node creates is never taken for a silent node's.
                try await store.heartbeat(startedAt: startedAt, version: heraldVersion, address: "")
            } catch {
                pool.cancel()
                throw ConfigurationError(message: "cannot use the PostgreSQL store at \(url.redacted): \(error)")
            }
            logger.info("node \(configuration.nodeID) of a cluster on \(url.redacted)")
            return Storage(store: store, startedAt: startedAt, kind: .postgres(store, url, pool: pool))
        }
    }

    /// The broker for `hub`, and the services it needs (none for one process).
    /// - Parameter onRemoteEvent: called when another node published (the webhooks' doorbell).
    func broker(
        for hub: Hub,
        logger: Logger,
        onRemoteEvent: @escaping @Sendable () -> Void
    ) -> (broker: any Broker, services: [any Service], isReady: @Sendable () -> Bool) {
        switch kind {
        case .sqlite:
            return (LocalBroker(hub: hub), [], { true })
        case .postgres(let store, let url, _):
            let broker = PostgresBroker(
                store: store,
                hub: hub,
                node: store.node,
                url: url,
                logger: logger.labelled("herald.cluster"),
                onRemoteEvent: onRemoteEvent
            )
            return (broker, [broker], { broker.isListening })
        }
    }

    /// The services of a cluster node: heartbeats, and taking over the checks of silent nodes.
    func clusterServices(
        runner: CheckRunner,
        address: @escaping @Sendable () -> String,
        logger: Logger
    )
        -> [any Service]
    {
        guard case .postgres(let store, _, _) = kind else { return [] }
        return [
            ClusterNode(
                store: store,
                startedAt: startedAt,
                version: heraldVersion,
                address: address,
                logger: logger.labelled("herald.cluster"),
                onTakeOver: { checks in for check in checks { runner.submit(check) } }
            )
        ]
    }

    /// Whether this node may run the janitor now: always for one process; in a cluster, while it
    /// holds the janitor's lease (for three intervals, renewed at every pass).
    func janitorTurn(interval: Duration) -> @Sendable () async -> Bool {
        guard case .postgres(let store, _, _) = kind else { return { true } }
        return { (try? await store.acquireLease("janitor", for: interval * 3)) ?? false }
    }

    /// The nodes as `GET /api/v1/cluster` shows them: this process alone for SQLite.
    func nodesJSON(thisNode: String, address: @escaping @Sendable () -> String) -> @Sendable () async throws -> String {
        let startedAt = startedAt
        guard case .postgres(let store, _, _) = kind else {
            return {
                Self.nodesJSON([
                    NodeRecord(
                        id: thisNode,
                        startedAt: startedAt,
                        heartbeatAt: .now(),
                        version: heraldVersion,
                        address: address()
                    )
                ])
            }
        }
        return {
            Self.nodesJSON(try await store.nodes(beatWithin: .seconds(10)))
        }
    }

    private static func nodesJSON(_ nodes: [NodeRecord]) -> String {
        var writer = JSONWriter()
        writer.raw(
            "nodes",
            jsonArray(
                nodes.lazy.map { node in
                    var item = JSONWriter()
                    item.string("id", node.id)
                    item.string("address", node.address)
                    item.string("version", node.version)
                    item.string("started_at", node.startedAt.rfc3339)
                    item.string("heartbeat_at", node.heartbeatAt.rfc3339)
                    return item.result
                }
            )
        )
        return writer.result
    }

    /// After the services stopped: the embedded store records a clean stop; a cluster node's
    /// pool closes.
    func close(logger: Logger) async {
        switch kind {
        case .sqlite(let store, let lock):
            do {
                try await store.endRun()
            } catch {
                logger.error("the store could not record a clean stop", metadata: ["error": "\(error)"])
            }
            withExtendedLifetime(lock) {}
        case .postgres(_, _, let pool):
            pool.cancel()
        }
    }
}
