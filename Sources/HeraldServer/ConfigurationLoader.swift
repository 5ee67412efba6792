internal import Foundation
internal import HeraldAccess
internal import HeraldCore
internal import HeraldHTTP
internal import HeraldHooks
internal import HeraldHub
internal import HeraldRunner
internal import HeraldStore
internal import HeraldWebSocket
internal import Logging

/// A configuration that cannot be used; its message is the one line `herald` prints.
package struct ConfigurationError: Error, CustomStringConvertible {
    package var message: String
    package var description: String { message }
}

/// Resolves every setting from flags, the environment, a JSON config file and defaults, in
/// that order of precedence, and validates it once. Nothing else reads the environment.
package enum ConfigurationLoader {
    /// One setting: its name (the flag without `--`, and the config file key) and how it applies.
    struct Setting: Sendable {
        var name: String
        var help: String
        var apply: @Sendable (inout HeraldConfiguration, String) throws(ConfigurationError) -> Void

        /// The environment variable: `HERALD_` and the name in upper snake case.
        var environmentName: String { "HERALD_" + name.uppercased().replacingOccurrences(of: "-", with: "_") }
    }

    /// Every setting `herald serve` knows, as documented in docs/operations.md.
    static let settings: [Setting] = [
        Setting(name: "host", help: "listen address") { c, v throws(ConfigurationError) in c.host = v },
        Setting(name: "port", help: "HTTP port") { c, v throws(ConfigurationError) in
            c.port = try int(v, "port", 0...65535)
        },
        Setting(name: "grpc-port", help: "gRPC port, 0 turns gRPC off") { c, v throws(ConfigurationError) in
            c.grpcPort = try int(v, "grpc-port", 0...65535)
        },
        Setting(name: "data-dir", help: "directory of the SQLite store") { c, v throws(ConfigurationError) in
            c.dataDirectory = v
        },
        Setting(name: "store", help: "sqlite, or a postgres:// URL") { c, v throws(ConfigurationError) in
            if v == "sqlite" {
                c.store = .sqlite
            } else if let url = URLComponents(string: v), url.scheme == "postgres" || url.scheme == "postgresql",
                url.host?.isEmpty == false
            {
                c.store = .postgres(url: v)
            } else {
                throw ConfigurationError(message: "store must be 'sqlite' or a postgres://user:pass@host:port/db URL")
            }
        },
        Setting(name: "api-key", help: "server API key, or several: name=key,name2=key2") {
            c,
            v throws(ConfigurationError) in
            guard v.utf8.allSatisfy({ (0x21...0x7e).contains($0) }), ServerKeys(list: v) != nil else {
                throw ConfigurationError(
                    message: "api-key must be one or more comma-separated keys (name=key allowed), "
                        + "each at least 8 visible ASCII characters"
                )
            }
            c.http.apiKey = v
        },
        Setting(name: "token-secret", help: "HMAC secret of client tokens (HS256, 32 bytes or more)") {
            c,
            v throws(ConfigurationError) in
            guard v.utf8.count >= 32 else {
                throw ConfigurationError(message: "token-secret must be at least 32 bytes")
            }
            c.access.tokenSecret = v
        },
        Setting(name: "token-jwks-file", help: "JWKS file of client tokens' public keys") {
            c,
            v throws(ConfigurationError) in c.access.jwksFile = v
        },
        Setting(name: "token-jwks-url", help: "HTTPS URL of a JWKS, fetched and cached") {
            c,
            v throws(ConfigurationError) in
            // http:// only to this machine (a local issuer, tests): keys never cross a network in the clear.
            guard let url = URLComponents(string: v), let host = url.host,
                url.scheme == "https" || (url.scheme == "http" && AccessSettings.isLoopback(host))
            else {
                throw ConfigurationError(message: "token-jwks-url must be an https:// URL (http:// only to loopback)")
            }
            c.access.jwksURL = v
        },
        Setting(name: "token-audience", help: "required aud of client tokens") { c, v throws(ConfigurationError) in
            c.access.audience = v
        },
        Setting(name: "token-issuer", help: "required iss of client tokens") { c, v throws(ConfigurationError) in
            c.access.issuer = v
        },
        Setting(name: "token-leeway", help: "seconds of clock skew allowed on exp and nbf") {
            c,
            v throws(ConfigurationError) in c.access.leeway = .seconds(try int(v, "token-leeway", 0...600))
        },
        Setting(name: "public-channels", help: "channel patterns anyone may read, comma-separated") {
            c,
            v throws(ConfigurationError) in
            guard let set = PatternSet(list: v) else {
                throw ConfigurationError(message: "public-channels must be comma-separated channel patterns")
            }
            c.access.publicChannels = set
        },
        Setting(name: "allowed-origins", help: "origins (or *) for CORS and the WebSocket Origin check") {
            c,
            v throws(ConfigurationError) in
            let origins = Set(v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
            guard !origins.isEmpty else {
                throw ConfigurationError(message: "allowed-origins must name at least one origin, or *")
            }
            c.http.allowedOrigins = origins.contains("*") ? nil : origins
            c.webSocket.allowedOrigins = origins.contains("*") ? [] : origins
        },
        Setting(name: "jsonp", help: "serve callback= (JSONP) answers") { c, v throws(ConfigurationError) in
            c.http.jsonp = try bool(v, "jsonp")
        },
        Setting(name: "create-checks", help: "who may create checks: anyone, token or key") {
            c,
            v throws(ConfigurationError) in
            guard let value = CheckCreators(rawValue: v) else {
                throw ConfigurationError(message: "create-checks must be anyone, token or key")
            }
            c.access.checkCreators = value
        },
        Setting(name: "rate-limit-creates", help: "checks a client may create per second (0: off)") {
            c,
            v throws(ConfigurationError) in c.access.rates[.creates] = try rate(v, "rate-limit-creates")
        },
        Setting(name: "rate-limit-publishes", help: "events a client may publish per second with a token (0: off)") {
            c,
            v throws(ConfigurationError) in c.access.rates[.publishes] = try rate(v, "rate-limit-publishes")
        },
        Setting(name: "rate-limit-ws-ops", help: "WebSocket ops a client may send per second (0: off)") {
            c,
            v throws(ConfigurationError) in c.access.rates[.webSocketOps] = try rate(v, "rate-limit-ws-ops")
        },
        Setting(name: "rate-limit-connects", help: "connections an address may open per second (0: off)") {
            c,
            v throws(ConfigurationError) in c.access.rates[.connects] = try rate(v, "rate-limit-connects")
        },
        Setting(name: "max-connections-per-ip", help: "connections one address may hold (0: off)") {
            c,
            v throws(ConfigurationError) in
            c.access.maxConnectionsPerAddress = try int(v, "max-connections-per-ip", 0...10_000_000)
        },
        Setting(name: "trusted-proxies", help: "addresses or CIDRs whose X-Forwarded-For is believed") {
            c,
            v throws(ConfigurationError) in
            var networks: [Network] = []
            for item in v.split(separator: ",") {
                let text = item.trimmingCharacters(in: .whitespaces)
                guard let network = Network(text) else {
                    throw ConfigurationError(message: "trusted-proxies: '\(text)' is not an address or a CIDR")
                }
                networks.append(network)
            }
            c.access.trustedProxies = networks
        },
        Setting(name: "check-allowed-targets", help: "host or host:port patterns http and tcp checks may reach") {
            c,
            v throws(ConfigurationError) in
            guard let set = PatternSet(list: v.lowercased()) else {
                throw ConfigurationError(message: "check-allowed-targets must be comma-separated host patterns")
            }
            c.access.allowedTargets = set
        },
        Setting(name: "allow-private-targets", help: "allow loopback and private targets") {
            c,
            v throws(ConfigurationError) in c.allowPrivateTargets = try bool(v, "allow-private-targets")
        },
        Setting(name: "heartbeat", help: "seconds between stream heartbeats") { c, v throws(ConfigurationError) in
            c.http.heartbeat = .seconds(try int(v, "heartbeat", 1...3600))
        },
        Setting(name: "tls-cert", help: "PEM certificate file") { c, v throws(ConfigurationError) in
            c.tlsCertificatePath = v
        },
        Setting(name: "tls-key", help: "PEM private key file") { c, v throws(ConfigurationError) in c.tlsKeyPath = v },
        Setting(name: "webhook-retry-schedule", help: "seconds before each retry, comma-separated") {
            c,
            v throws(ConfigurationError) in
            var schedule: [Duration] = []
            for part in v.split(separator: ",", omittingEmptySubsequences: false) {
                schedule.append(
                    .seconds(try int(part.trimmingCharacters(in: .whitespaces), "webhook-retry-schedule", 0...604_800))
                )
            }
            c.webhooks.retrySchedule = schedule
        },
        Setting(name: "webhook-timeout", help: "seconds a webhook target has to answer") {
            c,
            v throws(ConfigurationError) in c.webhooks.timeout = .seconds(try int(v, "webhook-timeout", 1...300))
        },
        Setting(name: "webhook-max-in-flight", help: "webhook deliveries in flight at once") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.maxInFlight = try int(v, "webhook-max-in-flight", 1...100_000)
        },
        Setting(name: "webhook-max-per-target", help: "webhook deliveries in flight at once to one target") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.maxInFlightPerTarget = try int(v, "webhook-max-per-target", 1...10_000)
        },
        Setting(name: "webhook-suspect-rate", help: "attempts per second to targets not known healthy") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.suspectAttemptsPerSecond = try int(v, "webhook-suspect-rate", 1...100_000)
        },
        Setting(name: "webhook-breaker-failures", help: "consecutive failures that open a target's circuit") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.breakerThreshold = try int(v, "webhook-breaker-failures", 1...10_000)
        },
        Setting(name: "webhook-breaker-cooldown", help: "seconds an open circuit waits before one probe") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.breakerCooldown = .seconds(try int(v, "webhook-breaker-cooldown", 1...86_400))
        },
        Setting(name: "webhook-disable-after", help: "seconds of failure before a subscription is disabled") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.disableAfter = .seconds(try int(v, "webhook-disable-after", 1...31_536_000))
        },
        Setting(name: "webhook-max-lag-events", help: "events waiting for a subscription before it is disabled") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.lagCap.events = try int(v, "webhook-max-lag-events", 1...100_000_000)
        },
        Setting(name: "webhook-max-lag-age", help: "seconds the oldest event may wait for a subscription") {
            c,
            v throws(ConfigurationError) in
            c.webhooks.lagCap.age = .seconds(try int(v, "webhook-max-lag-age", 1...31_536_000))
        },
        Setting(name: "webhook-secret-overlap", help: "seconds a rotated-out secret keeps signing") {
            c,
            v throws(ConfigurationError) in
            c.http.secretOverlap = .seconds(try int(v, "webhook-secret-overlap", 0...604_800))
        },
        Setting(name: "max-body-bytes", help: "largest request body") { c, v throws(ConfigurationError) in
            c.http.maxBodyBytes = try int(v, "max-body-bytes", 1024...16_777_216)
        },
        Setting(name: "max-wait", help: "cap on a long poll's wait, seconds") { c, v throws(ConfigurationError) in
            c.http.maxWait = .seconds(try int(v, "max-wait", 1...3600))
        },
        Setting(name: "backlog", help: "pending connections queued by the kernel") { c, v throws(ConfigurationError) in
            c.http.backlog = try int(v, "backlog", 1...65535)
        },
        Setting(name: "idle-timeout", help: "seconds before an idle or stalled connection is closed") {
            c,
            v throws(ConfigurationError) in c.http.idleTimeout = .seconds(try int(v, "idle-timeout", 1...3600))
        },
        Setting(name: "max-connections", help: "client connections held at once (default: open-file limit - 256)") {
            c,
            v throws(ConfigurationError) in c.http.maxConnections = try int(v, "max-connections", 1...10_000_000)
        },
        Setting(name: "write-timeout", help: "seconds a connection may stay unwritable before it is closed") {
            c,
            v throws(ConfigurationError) in c.http.writeTimeout = .seconds(try int(v, "write-timeout", 1...3600))
        },
        Setting(name: "shutdown-timeout", help: "seconds SIGTERM waits for connections before cancelling them") {
            c,
            v throws(ConfigurationError) in c.http.shutdownTimeout = .seconds(try int(v, "shutdown-timeout", 1...3600))
        },
        Setting(name: "head-timeout", help: "seconds a request head may take to arrive") {
            c,
            v throws(ConfigurationError) in c.http.headTimeout = .seconds(try int(v, "head-timeout", 1...3600))
        },
        Setting(name: "min-body-rate", help: "bytes per second a request body must keep up") {
            c,
            v throws(ConfigurationError) in c.http.minBodyRate = try int(v, "min-body-rate", 1...1_073_741_824)
        },
        Setting(name: "poll-max-events", help: "most events in one poll answer") { c, v throws(ConfigurationError) in
            c.http.maxEventsPerPoll = try int(v, "poll-max-events", 1...100_000)
        },
        Setting(name: "history-max-events", help: "events kept per channel") { c, v throws(ConfigurationError) in
            c.retention.maxEventsPerChannel = try int(v, "history-max-events", 1...10_000_000)
        },
        Setting(name: "history-max-age", help: "seconds events are kept") { c, v throws(ConfigurationError) in
            c.retention.maxEventAge = .seconds(try int(v, "history-max-age", 1...31_536_000))
        },
        Setting(name: "janitor-interval", help: "seconds between two removals of what is past retention") {
            c,
            v throws(ConfigurationError) in
            c.retention.janitorInterval = .seconds(try int(v, "janitor-interval", 1...3600))
        },
        Setting(name: "check-retention", help: "seconds ended checks are kept") { c, v throws(ConfigurationError) in
            c.retention.checkRetention = .seconds(try int(v, "check-retention", 1...315_360_000))
        },
        Setting(name: "runner-concurrency", help: "network checks running at once") { c, v throws(ConfigurationError) in
            c.runner.maxConcurrentChecks = try int(v, "runner-concurrency", 1...10_000)
        },
        Setting(name: "runner-queue", help: "network checks waiting before 429") { c, v throws(ConfigurationError) in
            c.runner.maxQueuedChecks = try int(v, "runner-queue", 1...1_000_000)
        },
        Setting(name: "external-timeout", help: "seconds an external check waits") { c, v throws(ConfigurationError) in
            c.runner.externalTimeout = .seconds(try int(v, "external-timeout", 1...31_536_000))
        },
        Setting(name: "stream-max-queued-events", help: "events queued per stream subscriber before it is cut") {
            c,
            v throws(ConfigurationError) in
            c.streams.maxQueuedEvents = try int(v, "stream-max-queued-events", 1...1_000_000)
        },
        Setting(name: "stream-max-queued-bytes", help: "bytes queued per stream subscriber before it is cut") {
            c,
            v throws(ConfigurationError) in
            c.streams.maxQueuedBytes = try int(v, "stream-max-queued-bytes", 1024...1_073_741_824)
        },
        Setting(name: "ws-max-message-bytes", help: "largest WebSocket message a client may send") {
            c,
            v throws(ConfigurationError) in
            c.webSocket.maxMessageBytes = try int(v, "ws-max-message-bytes", 128...16_777_216)
        },
        Setting(name: "ws-max-queued-frames", help: "frames queued per WebSocket before it is cut") {
            c,
            v throws(ConfigurationError) in
            c.webSocket.maxQueuedFrames = try int(v, "ws-max-queued-frames", 1...1_000_000)
        },
        Setting(name: "ws-max-queued-bytes", help: "bytes queued per WebSocket before it is cut") {
            c,
            v throws(ConfigurationError) in
            c.webSocket.maxQueuedBytes = try int(v, "ws-max-queued-bytes", 65_536...1_073_741_824)
        },
        Setting(name: "ws-max-subscriptions", help: "channels per WebSocket connection") {
            c,
            v throws(ConfigurationError) in
            c.webSocket.maxSubscriptions = try int(v, "ws-max-subscriptions", 1...100_000)
        },
        Setting(name: "ws-allowed-origins", help: "origins allowed to open a WebSocket, comma-separated") {
            c,
            v throws(ConfigurationError) in
            let origins = Set(v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
            c.webSocket.allowedOrigins = origins.contains("*") ? [] : origins
        },
        Setting(
            name: "node-id",
            help: "this node's id in a cluster (default: kept in the data directory, made at first start)"
        ) {
            c,
            v throws(ConfigurationError) in
            guard (1...64).contains(v.utf8.count), v.utf8.allSatisfy({ (0x21...0x7e).contains($0) }) else {
                throw ConfigurationError(message: "node-id must be 1 to 64 visible ASCII characters")
            }
            c.nodeID = v
        },
        Setting(name: "postgres-pool-size", help: "connections to PostgreSQL per node") {
            c,
            v throws(ConfigurationError) in
            c.postgresPoolSize = try int(v, "postgres-pool-size", 1...1000)
        },
        Setting(
            name: "postgres-query-timeout",
            help: "seconds a store call may run on its PostgreSQL connection before it is closed"
        ) { c, v throws(ConfigurationError) in
            c.postgresQueryTimeout = .seconds(try int(v, "postgres-query-timeout", 6...3600))
        },
        Setting(name: "durability", help: "normal or full") { c, v throws(ConfigurationError) in
            guard let value = Durability(rawValue: v) else {
                throw ConfigurationError(message: "durability must be 'normal' or 'full'")
            }
            c.durability = value
        },
        Setting(name: "log-level", help: "trace, debug, info, notice, warning, error, critical") {
            c,
            v throws(ConfigurationError) in
            guard let level = Logger.Level(rawValue: v) else {
                throw ConfigurationError(
                    message: "log-level must be one of trace, debug, info, notice, warning, error, critical"
                )
            }
            c.logLevel = level
        },
    ]

    /// Resolves the configuration.
    ///
    /// - Parameters:
    ///   - flags: values given on the command line, by setting name (plus `config`).
    ///   - environment: the process environment.
    /// - Throws: ``ConfigurationError`` naming the first bad value, or an unreadable file.
    package static func load(
        flags: [String: String],
        environment: [String: String]
    ) throws(ConfigurationError)
        -> HeraldConfiguration
    {
        var values: [String: String] = [:]
        if let path = flags["config"] ?? environment["HERALD_CONFIG"] {
            values = try readFile(path)
        }
        for setting in settings {
            if let value = environment[setting.environmentName] { values[setting.name] = value }
            if let value = flags[setting.name] { values[setting.name] = value }
        }
        let known = Set(settings.map(\.name) + ["config"])
        if let unknown = flags.keys.first(where: { !known.contains($0) }) {
            throw ConfigurationError(message: "unknown setting '\(unknown)'")
        }
        var configuration = HeraldConfiguration()
        for setting in settings {
            if let value = values[setting.name] { try setting.apply(&configuration, value) }
        }
        if configuration.http.apiKey.isEmpty {
            configuration.http.apiKey = randomToken(bytes: 24)
            configuration.apiKeyWasGenerated = true
        }
        if (configuration.tlsCertificatePath == nil) != (configuration.tlsKeyPath == nil) {
            throw ConfigurationError(message: "tls-cert and tls-key go together")
        }
        return configuration
    }

    /// Reads a JSON object whose keys are setting names and whose values are strings,
    /// numbers, booleans or (for the retry schedule) arrays of numbers.
    private static func readFile(_ path: String) throws(ConfigurationError) -> [String: String] {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigurationError(message: "cannot read config file \(path)")
        }
        let object: JSONValue
        do {
            object = try JSONValue.parse(data)
        } catch {
            throw ConfigurationError(message: "config file \(path) is not valid JSON: \(error)")
        }
        guard let members = object.objectValue else {
            throw ConfigurationError(message: "config file \(path) is not a JSON object")
        }
        var values: [String: String] = [:]
        for (key, value) in members {
            guard settings.contains(where: { $0.name == key }) else {
                throw ConfigurationError(message: "config file \(path): unknown setting '\(key)'")
            }
            switch value {
            case .string(let text): values[key] = text
            case .int(let number): values[key] = String(number)
            case .double(let number): values[key] = String(number)
            case .bool(let flag): values[key] = String(flag)
            case .array(let items):
                values[key] = items.map { item in if case .int(let n) = item { String(n) } else { "?" } }
                    .joined(separator: ",")
            default:
                throw ConfigurationError(message: "config file \(path): '\(key)' must be a string, number or boolean")
            }
        }
        return values
    }

    private static func int(_ text: String, _ name: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int
    {
        guard let value = Int(text), range.contains(value) else {
            throw ConfigurationError(
                message: "\(name) must be an integer in \(range.lowerBound)...\(range.upperBound), not '\(text)'"
            )
        }
        return value
    }

    /// A rate per second: a non-negative number (0 turns the limit off).
    private static func rate(_ text: String, _ name: String) throws(ConfigurationError) -> Double {
        guard let value = Double(text), value == 0 || (0.01...1_000_000).contains(value) else {
            throw ConfigurationError(
                message: "\(name) must be 0 (off) or a number per second from 0.01 to 1000000, not '\(text)'"
            )
        }
        return value
    }

    private static func bool(_ text: String, _ name: String) throws(ConfigurationError) -> Bool {
        switch text.lowercased() {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ConfigurationError(message: "\(name) must be true or false, not '\(text)'")
        }
    }
}
