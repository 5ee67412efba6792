package import HeraldAccess
internal import HeraldCore
package import HeraldHTTP
package import HeraldHooks
package import HeraldHub
package import HeraldRunner
package import HeraldStore
package import HeraldWebSocket
package import Logging

/// Herald's version, as `GET /api/v1/cluster` shows it for each node.
package let heraldVersion = "0.17.0"

/// Everything `herald serve` can be told, as a tree of slices; each component gets its own.
///
/// Built only by ``ConfigurationLoader``, which resolves flag > environment > config file >
/// default and validates once. Defaults live in the initializers of the slices.
package struct HeraldConfiguration: Sendable {
    /// Listen address (`--host`, `HERALD_HOST`, default `127.0.0.1`).
    package var host: String = "127.0.0.1"
    /// HTTP port (`--port`, `HERALD_PORT`, default 8080; 0 picks a free port).
    package var port: Int = 8080
    /// gRPC port (`--grpc-port`, `HERALD_GRPC_PORT`, default 8081; 0 turns gRPC off).
    package var grpcPort: Int = 8081
    /// Where the SQLite store lives (`--data-dir`, `HERALD_DATA_DIR`, default `./.herald`).
    package var dataDirectory: String = "./.herald"
    /// The store (`--store`, `HERALD_STORE`, default `sqlite`).
    package var store: StoreKind = .sqlite
    /// This node's id in a cluster (`node-id`, `HERALD_NODE_ID`; `nil`: the one kept in the data
    /// directory, made at the first start, so a restarted node resumes its own checks at once).
    package var nodeID: String?
    /// Connections to PostgreSQL per node (`postgres-pool-size`, `HERALD_POSTGRES_POOL_SIZE`,
    /// default 16), besides the one that listens for notifications.
    package var postgresPoolSize = 16
    /// How long a store call may run on its PostgreSQL connection before the connection is
    /// closed and the call fails `unavailable` (`postgres-query-timeout`, seconds, default 30).
    package var postgresQueryTimeout: Duration = .seconds(30)
    /// How hard a commit is pushed to disk (`durability`, `HERALD_DURABILITY`, default `normal`).
    package var durability: Durability = .normal
    /// Whether checks and webhooks may reach non-public addresses
    /// (`--allow-private-targets`, `HERALD_ALLOW_PRIVATE_TARGETS`, default off).
    package var allowPrivateTargets = false
    /// PEM certificate and key for TLS on the HTTP port (`--tls-cert`, `--tls-key`).
    package var tlsCertificatePath: String?
    package var tlsKeyPath: String?
    /// Whether the API key was generated (and must be printed once) rather than given.
    package var apiKeyWasGenerated = false
    /// Log level (`log-level`, `HERALD_LOG_LEVEL`, default `info`).
    package var logLevel: Logger.Level = .info

    package var http = HTTPConfiguration(apiKey: "")
    package var access = AccessSettings()
    package var runner = RunnerConfiguration()
    package var retention = RetentionConfiguration()
    package var webSocket = WebSocketConfiguration()
    package var webhooks = WebhookConfiguration()
    /// The bound of every streaming subscriber's queue (SSE, NDJSON, iframe, WebSocket, gRPC).
    package var streams = SubscriberLimits()

    /// Where the data lives.
    package enum StoreKind: Sendable, Hashable {
        case sqlite
        case postgres(url: String)
    }

    package init() {}

    /// The server API key clients send as `Authorization: Bearer <key>` (or several:
    /// `name=key,name2=key2`).
    package var apiKey: String { http.apiKey }

    /// The server API keys, parsed (the loader validated them).
    package var serverKeys: ServerKeys {
        ServerKeys(list: http.apiKey) ?? ServerKeys(list: "invalid-key-never-matches")!
    }

    /// What the start line says about access: whether channels are public, who creates checks.
    package var accessSummary: String {
        let creators = access.checkCreators(listeningOn: host).rawValue
        guard access.tokensConfigured else {
            let publicChannels = access.publicChannels.map { "public channels: \($0)" } ?? "every channel is public"
            return "\(publicChannels) (no token key is set); create-checks: \(creators)"
        }
        return
            "client tokens on; public channels: \(access.publicChannels?.description ?? "none"); create-checks: \(creators)"
    }
}
