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
    /// This node's id in a cluster (`node-id`, or the data directory's).
    let nodeID: String
    /// The embedded store and its locked data directory, or a cluster node's store.
    private let kind: Kind

    private enum Kind {
        case sqlite(SQLiteStore, DataDirectoryLock)
        case postgres(PostgresStore, PostgresURL, DataDirectoryLock, pool: Task<Void, Never>)
    }

    /// Whether this node shares its store with others (PostgreSQL).
    var isCluster: Bool {
        if case .postgres = kind { return true }
        return false
    }

    /// Opens the store. A PostgreSQL store's pool starts here, for the migrations.
    /// - Throws: ``ConfigurationError`` when the store cannot be used.
    static func open(_ configuration: HeraldConfiguration, logger: Logger) async throws -> Storage {
        // Locked in a cluster too: the directory keeps the node's id, for one process at a time.
        let directory = URL(fileURLWithPath: configuration.dataDirectory, isDirectory: true)
        let lock = try DataDirectoryLock(directory: directory)
        let nodeID = try configuration.nodeID ?? Self.nodeID(in: directory)
        switch configuration.store {
        case .sqlite:
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
                return Storage(store: store, startedAt: .now(), nodeID: nodeID, kind: .sqlite(store, lock))
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
                node: nodeID,
                schema: url.searchPath,
                queryTimeout: configuration.postgresQueryTimeout,
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
            logger.info("node \(nodeID) of a cluster on \(url.redacted)")
            return Storage(
                store: store,
                startedAt: startedAt,
                nodeID: nodeID,
                kind: .postgres(store, url, lock, pool: pool)
            )
        }
    }

    /// The node id kept in `directory` (`node-id`), made at the first start.
    private static func nodeID(in directory: URL) throws -> String {
        let file = directory.appendingPathComponent("node-id")
        if let kept = try? String(contentsOf: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines),
            !kept.isEmpty
        {
            return kept
        }
        let fresh = "node-" + randomToken(bytes: 6)
        do {
            try Data((fresh + "\n").utf8).write(to: file, options: .atomic)
        } catch {
            throw ConfigurationError(message: "cannot write \(file.path): \(error.localizedDescription)")
        }
        return fresh
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
        case .postgres(let store, let url, _, _):
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
        guard case .postgres(let store, _, _, _) = kind else { return [] }
        return [
            ClusterNode(
                store: store,
                startedAt: startedAt,
                version: heraldVersion,
                address: address,
                logger: logger.labelled("herald.cluster"),
                room: { runner.room },
                onTakeOver: { checks in for check in checks { runner.submit(check) } }
            )
        ]
    }

    /// Whether this node may run the janitor now: always for one process; in a cluster, while it
    /// holds the janitor's lease (for three intervals, renewed at every pass).
    func janitorTurn(interval: Duration) -> @Sendable () async -> Bool {
        guard case .postgres(let store, _, _, _) = kind else { return { true } }
        return { (try? await store.acquireLease("janitor", for: interval * 3)) ?? false }
    }

    /// The nodes as `GET /api/v1/cluster` shows them: this process alone for SQLite.
    func nodesJSON(thisNode: String, address: @escaping @Sendable () -> String) -> @Sendable () async throws -> String {
        let startedAt = startedAt
        guard case .postgres(let store, _, _, _) = kind else {
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
        case .postgres(_, _, let lock, let pool):
            pool.cancel()
            withExtendedLifetime(lock) {}
        }
    }
}

/// An exclusive `flock` on `herald.lock` in the data directory, so two processes never share
/// one SQLite store, or one cluster node's id, by mistake. The kernel releases it when the process ends, even by `kill -9`.
final class DataDirectoryLock: Sendable {
    private let descriptor: Int32

    init(directory: URL) throws {
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw ConfigurationError(
                message: "cannot create data directory \(directory.path): \(error.localizedDescription)"
            )
        }
        let path = directory.appendingPathComponent("herald.lock").path
        descriptor = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw ConfigurationError(message: "cannot open \(path)") }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            close(descriptor)
            throw ConfigurationError(message: "data directory \(directory.path) is in use by another herald process")
        }
    }

    deinit { close(descriptor) }
}
