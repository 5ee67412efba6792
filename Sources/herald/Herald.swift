import ArgumentParser
import Foundation
import HeraldServer
import Logging

/// `herald`: the Herald server and its tools.
@main
struct Herald: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Herald, a self-hosted server-push system.",
        subcommands: [Serve.self, CheckCommand.self, WatchCommand.self, PublishCommand.self, SubscribeCommand.self]
    )

    /// Parses and runs, printing a one-line reason for a bad flag instead of a usage page.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var command = command as? any AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
        } catch let error as ConfigurationError {
            FileHandle.standardError.write(Data("herald: \(error.message)\n".utf8))
            Foundation.exit(1)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)
            }
            let message = Herald.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            FileHandle.standardError.write(Data("herald: \(message)\n".utf8))
            Foundation.exit(code.rawValue == 0 ? 1 : code.rawValue)
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the Herald server.",
        discussion: """
            Settings come from flags, then HERALD_* environment variables, then the JSON config
            file, then defaults. Finer settings (history-max-events, max-wait, runner-concurrency,
            ...) are set in the config file or as HERALD_* variables; see docs/operations.md.
            """
    )

    @Option(help: "Listen address (HERALD_HOST, default 127.0.0.1).") var host: String?
    @Option(help: "HTTP port, 0 for any free port (HERALD_PORT, default 8080).") var port: String?
    @Option(name: .customLong("grpc-port"), help: "gRPC port, 0 turns gRPC off (HERALD_GRPC_PORT, default 8081).")
    var grpcPort: String?
    @Option(name: .customLong("data-dir"), help: "Directory of the SQLite store (HERALD_DATA_DIR, default ./.herald).")
    var dataDir: String?
    @Option(help: "sqlite or postgres://user:pass@host:port/db (HERALD_STORE, default sqlite).") var store: String?
    @Option(name: .customLong("api-key"), help: "Server API key (HERALD_API_KEY; generated and printed when unset).")
    var apiKey: String?
    @Flag(
        name: .customLong("allow-private-targets"),
        help: "Let checks and webhooks reach loopback and private addresses."
    )
    var allowPrivateTargets = false
    @Option(help: "Seconds between heartbeats on idle streams (HERALD_HEARTBEAT, default 15).") var heartbeat: String?
    @Option(name: .customLong("tls-cert"), help: "PEM certificate for TLS on the HTTP port.") var tlsCert: String?
    @Option(name: .customLong("tls-key"), help: "PEM private key for TLS on the HTTP port.") var tlsKey: String?
    @Option(name: .customLong("webhook-retry-schedule"), help: "Seconds before each webhook retry, comma-separated.")
    var webhookRetrySchedule: String?
    @Option(name: .customLong("webhook-timeout"), help: "Seconds a webhook target has to answer (default 15).")
    var webhookTimeout: String?
    @Option(help: "JSON config file (HERALD_CONFIG).") var config: String?
    @OptionGroup(title: "Access control (docs/security.md)") var access: AccessOptions
    @OptionGroup(title: "A node of a cluster (docs/cluster.md)") var cluster: ClusterOptions

    func run() async throws {
        var flags: [String: String] = [:]
        flags["host"] = host
        flags["port"] = port
        flags["grpc-port"] = grpcPort
        flags["data-dir"] = dataDir
        flags["store"] = store
        flags["api-key"] = apiKey
        if allowPrivateTargets { flags["allow-private-targets"] = "true" }
        flags["heartbeat"] = heartbeat
        flags["tls-cert"] = tlsCert
        flags["tls-key"] = tlsKey
        flags["webhook-retry-schedule"] = webhookRetrySchedule
        flags["webhook-timeout"] = webhookTimeout
        flags["config"] = config
        flags.merge(access.flags) { _, new in new }
        flags.merge(cluster.flags) { _, new in new }
        let configuration = try ConfigurationLoader.load(flags: flags, environment: ProcessInfo.processInfo.environment)

        let level = configuration.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "herald")
        logger.logLevel = level
        if configuration.apiKeyWasGenerated {
            say("herald: generated API key \(configuration.apiKey) (set --api-key or HERALD_API_KEY to choose one)")
        }
        try await HeraldServer(configuration: configuration, logger: logger).run { url, grpcPort in
            say(
                "herald listening on \(url)" + (grpcPort.map { " (gRPC on port \($0))" } ?? "")
                    + " - \(configuration.accessSummary)"
            )
        }
    }
}

/// Writes one line to standard output at once (unbuffered, so scripts see it immediately).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

/// The access-control settings as flags; each is also a `HERALD_*` variable and a config key.
struct AccessOptions: ParsableArguments {
    @Option(name: .customLong("token-secret"), help: "HMAC secret of client tokens (32+ bytes).")
    var tokenSecret: String?
    @Option(name: .customLong("token-jwks-file"), help: "JWKS file of client tokens' public keys.")
    var tokenJWKSFile: String?
    @Option(name: .customLong("token-jwks-url"), help: "JWKS URL, fetched and cached.") var tokenJWKSURL: String?
    @Option(name: .customLong("token-audience"), help: "Required aud of client tokens.") var tokenAudience: String?
    @Option(name: .customLong("token-issuer"), help: "Required iss of client tokens.") var tokenIssuer: String?
    @Option(name: .customLong("public-channels"), help: "Channel patterns anyone may read.")
    var publicChannels: String?
    @Option(name: .customLong("allowed-origins"), help: "Origins (or *) for CORS and WebSocket.")
    var allowedOrigins: String?
    @Option(help: "true or false: serve JSONP (callback=).") var jsonp: String?
    @Option(name: .customLong("create-checks"), help: "anyone, token or key.") var createChecks: String?
    @Option(name: .customLong("check-allowed-targets"), help: "Host patterns http/tcp checks may reach.")
    var checkAllowedTargets: String?
    @Option(name: .customLong("rate-limit-creates"), help: "Checks per client per second.")
    var rateLimitCreates: String?
    @Option(name: .customLong("rate-limit-publishes"), help: "Token publishes per client per second.")
    var rateLimitPublishes: String?
    @Option(name: .customLong("max-connections"), help: "Connections held at once.") var maxConnections: String?
    @Option(name: .customLong("max-connections-per-ip"), help: "Connections one address may hold.")
    var maxConnectionsPerIP: String?
    @Option(name: .customLong("trusted-proxies"), help: "CIDRs whose X-Forwarded-For is believed.")
    var trustedProxies: String?

    var flags: [String: String] {
        let pairs: [(String, String?)] = [
            ("token-secret", tokenSecret), ("token-jwks-file", tokenJWKSFile), ("token-jwks-url", tokenJWKSURL),
            ("token-audience", tokenAudience), ("token-issuer", tokenIssuer), ("public-channels", publicChannels),
            ("allowed-origins", allowedOrigins), ("jsonp", jsonp), ("create-checks", createChecks),
            ("check-allowed-targets", checkAllowedTargets), ("rate-limit-creates", rateLimitCreates),
            ("rate-limit-publishes", rateLimitPublishes), ("max-connections", maxConnections),
            ("max-connections-per-ip", maxConnectionsPerIP), ("trusted-proxies", trustedProxies),
        ]
        return given(pairs)
    }
}

/// The settings of a cluster node as flags; each is also a `HERALD_*` variable and a config key.
struct ClusterOptions: ParsableArguments {
    @Option(name: .customLong("node-id"), help: "This node's id (default: kept in the data directory).")
    var nodeID: String?
    @Option(name: .customLong("postgres-pool-size"), help: "Connections to PostgreSQL (default 16).")
    var postgresPoolSize: String?
    @Option(name: .customLong("postgres-query-timeout"), help: "Seconds a store call may run (default 30).")
    var postgresQueryTimeout: String?

    var flags: [String: String] {
        let pairs: [(String, String?)] = [
            ("node-id", nodeID), ("postgres-pool-size", postgresPoolSize),
            ("postgres-query-timeout", postgresQueryTimeout),
        ]
        return given(pairs)
    }
}

/// The flags given, by setting name.
private func given(_ pairs: [(String, String?)]) -> [String: String] {
    Dictionary(uniqueKeysWithValues: pairs.compactMap { name, value in value.map { (name, $0) } })
}
