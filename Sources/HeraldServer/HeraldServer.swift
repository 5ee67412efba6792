internal import AsyncHTTPClient
internal import Foundation
internal import HTTPTypes
internal import HeraldAccess
internal import HeraldCore
internal import HeraldGRPC
internal import HeraldHTTP
internal import HeraldHooks
internal import HeraldHub
internal import HeraldNet
internal import HeraldRunner
internal import HeraldStore
internal import HeraldWebSocket
internal import Hummingbird
internal import HummingbirdCore
internal import HummingbirdHTTP2
package import Logging
internal import NIOCore
internal import NIOHTTP1
internal import NIOSSL
internal import ServiceLifecycle
internal import Synchronization
internal import UnixSignals

/// Herald assembled from a configuration: the store, hub, runner and HTTP server, run as one
/// `ServiceGroup` until SIGTERM or SIGINT.
///
/// Shutdown order is the reverse of start-up: WebSocket connections close with 1012 first,
/// then the hub drains (held long polls answer at once, streams end), then the HTTP server stops accepting and finishes what is in flight, then the
/// runner stops (checks it was running stay `processing` and resume at the next start).
/// The executable and the tests both start Herald through this type.
package struct HeraldServer: Sendable {
    let configuration: HeraldConfiguration
    let logger: Logger

    package init(configuration: HeraldConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Raises the open-file limit and derives the connection bound from it.
    private func connectionLimit() -> ConnectionLimit {
        let files = OpenFileLimit.raise()
        let allowed = max(files.after - OpenFileLimit.reserve, 16)
        let maximum = min(configuration.http.maxConnections ?? allowed, allowed)
        if let asked = configuration.http.maxConnections, asked > allowed {
            logger.warning(
                "max-connections \(asked) lowered to \(allowed): the open-file limit is \(files.after); raise LimitNOFILE"
            )
        }
        let perAddress = configuration.access.maxConnectionsPerAddress(listeningOn: configuration.host)
        let connects = configuration.access.rates(listeningOn: configuration.host)[.connects]
        return ConnectionLimit(
            maximum: maximum,
            summary: "open files: limit \(files.after) (was \(files.before)); at most \(maximum) connections"
                + (perAddress.map { ", \($0) per address" } ?? ""),
            perAddress: perAddress,
            connects: connects.map { RateLimiter(perSecond: $0) },
            exempt: ClientAddresses(trustedProxies: configuration.access.trustedProxies)
        )
    }

    /// Runs until a shutdown signal; calls `onListening` once every port is bound, with the
    /// HTTP base URL and the gRPC port (`nil` when gRPC is off).
    ///
    /// - Throws: ``ConfigurationError`` with a one-line reason when Herald cannot start.
    package func run(onListening: @escaping @Sendable (_ url: String, _ grpcPort: Int?) -> Void) async throws {
        let storage = try await Storage.open(configuration, logger: logger)
        let readiness = Readiness(expectsGRPC: configuration.grpcPort != 0, announce: onListening)
        let parts = try await assemble(storage, readiness: readiness)
        let connections = connectionLimit()
        let host = configuration.host
        let responder = StreamHeadResponder(try Self.router(api: parts.api, grpcWeb: parts.grpcWeb).buildResponder())
        let (server, scheme) = try httpServer(
            webSocket: parts.webSocket,
            access: parts.access,
            connections: connections,
            responder: responder
        )
        let app = Application(
            responder: responder,
            server: server,
            configuration: .init(
                address: .hostname(host, port: configuration.port),
                serverName: nil,
                backlog: configuration.http.backlog
            ),
            onServerRunning: { [logger] channel in
                logger.info("\(connections.summary)")
                let port = channel.localAddress?.port ?? 0
                let displayHost = host.contains(":") ? "[\(host)]" : host
                readiness.http("\(scheme)://\(displayHost):\(port)")
            },
            logger: logger.labelled("herald.http")
        )
        var lifecycle = ServiceGroupConfiguration(
            services: services(
                parts,
                storage: storage,
                app: DrainedHTTPServer(server: app, connections: connections),
                readiness: readiness
            ),
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger.labelled("herald.lifecycle")
        )
        // A client that stops reading must not hold SIGTERM forever: past shutdown-timeout
        // every service is cancelled, and past five more seconds the process ends anyway.
        lifecycle.maximumGracefulShutdownDuration = configuration.http.shutdownTimeout
        lifecycle.maximumCancellationDuration = .seconds(5)
        do {
            try await ServiceGroup(configuration: lifecycle).run()
        } catch let error as HeraldError where error.code == .unavailable {
            throw ConfigurationError(message: error.message)
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw ConfigurationError(message: "cannot listen on \(host):\(configuration.port): the address is in use")
        } catch let error as IOError {
            throw ConfigurationError(message: "cannot listen on \(host):\(configuration.port): \(error.description)")
        }
        await storage.close(logger: logger)
    }

    /// Herald's parts, wired: one event log over the store and the broker, and every
    /// transport over it.
    struct Parts {
        let hub: Hub
        /// What the broker runs (a cluster node's notification connection; nothing alone).
        let brokerServices: [any Service]
        let runner: CheckRunner
        let webhooks: WebhookDispatcher
        let access: Access
        let api: HeraldAPI
        let webSocket: WebSocketEndpoint
        let grpcService: HeraldService
        let grpcWeb: GRPCWebTransport
    }

    private func assemble(_ storage: Storage, readiness: Readiness) async throws -> Parts {
        let store = storage.store
        let resolver = TargetResolver(allowPrivateTargets: configuration.allowPrivateTargets)
        let webhooks = WebhookDispatcher(
            store: store,
            resolver: resolver,
            configuration: configuration.webhooks,
            logger: logger.labelled("herald.webhooks"),
            isAlone: !storage.isCluster
        )
        let hub = Hub(
            limits: configuration.streams,
            logger: logger.labelled("herald.hub"),
            onPublish: { webhooks.wake() }
        )
        let cluster = storage.broker(for: hub, logger: logger) { webhooks.wake() }
        let events = EventLog(store: store, broker: cluster.broker)
        let runner = CheckRunner(
            events: events,
            resolver: resolver,
            configuration: configuration.runner,
            logger: logger.labelled("herald.runner")
        )
        let checks = CheckService(events: events, runner: runner, resolver: resolver)
        let access = try await configuration.access.access(
            keys: configuration.serverKeys,
            host: configuration.host,
            logger: logger.labelled("herald.access"),
            fetch: Self.fetchKeySet
        )
        let api = HeraldAPI(
            store: store,
            events: events,
            hub: hub,
            checks: checks,
            access: access,
            configuration: configuration.http,
            logger: logger.labelled("herald.http"),
            isReady: cluster.isReady,
            nodes: storage.nodesJSON(thisNode: storage.nodeID, address: { readiness.url })
        )
        let follower = ChannelFollower(
            store: store,
            hub: hub,
            pageSize: configuration.http.maxEventsPerPoll,
            heartbeat: configuration.http.heartbeat
        )
        let webSocket = WebSocketEndpoint(
            follower: follower,
            checks: checks,
            events: events,
            access: access,
            configuration: configuration.webSocket,
            logger: logger.labelled("herald.ws")
        )
        let grpcService = HeraldService(
            events: events,
            hub: hub,
            checks: checks,
            follower: follower,
            access: access,
            configuration: GRPCConfiguration(
                maxDataBytes: configuration.http.maxBodyBytes,
                maxSubscriptions: configuration.webSocket.maxSubscriptions,
                writeTimeout: configuration.http.writeTimeout
            ),
            logger: logger.labelled("herald.grpc")
        )
        return Parts(
            hub: hub,
            brokerServices: cluster.services,
            runner: runner,
            webhooks: webhooks,
            access: access,
            api: api,
            webSocket: webSocket,
            grpcService: grpcService,
            grpcWeb: GRPCWebTransport(maxMessageBytes: configuration.http.maxBodyBytes)
        )
    }

    /// Every service, in start order; shutdown runs last to first: WebSockets close, the hub
    /// ends every stream, gRPC stops taking calls, HTTP drains, gRPC-Web (over HTTP) stops,
    /// then the workers.
    private func services(
        _ parts: Parts,
        storage: Storage,
        app: some Service,
        readiness: Readiness
    ) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        var services: [any Service] = parts.brokerServices
        services += storage.clusterServices(runner: parts.runner, address: { readiness.url }, logger: logger)
        services += [
            parts.runner,
            parts.webhooks,
            Janitor(
                store: storage.store,
                logger: logger.labelled("herald.janitor"),
                interval: configuration.retention.janitorInterval,
                lagCap: configuration.webhooks.lagCap,
                mayRun: storage.janitorTurn(interval: configuration.retention.janitorInterval)
            ),
            GRPCWebEndpoint(transport: parts.grpcWeb, service: parts.grpcService),
            app,
        ]
        if configuration.grpcPort != 0 {
            services.append(
                GRPCEndpoint(
                    service: parts.grpcService,
                    host: configuration.host,
                    port: configuration.grpcPort,
                    tls: configuration.tlsCertificatePath.flatMap { certificate in
                        configuration.tlsKeyPath.map {
                            GRPCEndpoint.TLSFiles(certificatePath: certificate, keyPath: $0)
                        }
                    },
                    keepalive: configuration.http.heartbeat,
                    maxMessageBytes: configuration.http.maxBodyBytes,
                    onListening: { port in readiness.grpc(port) }
                )
            )
        }
        services += [parts.hub, parts.webSocket]
        return services.map { .init(service: $0) }
    }

    /// Fetches `token-jwks-url` (at most 1 MiB, within 10 s).
    /// Redirects are not followed: one from https to http would carry the keys in the clear.
    @Sendable static func fetchKeySet(_ url: String) async throws -> String {
        let response = try await keySetClient.execute(HTTPClientRequest(url: url), timeout: .seconds(10))
        guard response.status == .ok else {
            throw HeraldError(.unavailable, "token-jwks-url answered \(response.status)")
        }
        return String(buffer: try await response.body.collect(upTo: 1 << 20))
    }

    /// The client of ``fetchKeySet(_:)``: the shared event loops, no redirects; it lives as
    /// long as the process.
    static let keySetClient = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: HTTPClient.Configuration(redirectConfiguration: .disallow)
    )

    /// The kernel's boot id, which tells a restart of Herald from a restart of the machine.
    static func bootID() -> String? {
        (try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The TLS context of the HTTP port, offering HTTP/2 and HTTP/1.1 by ALPN.
    static func tlsContext(certificatePath: String, keyPath: String) throws -> NIOSSLContext {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do {
            chain = try NIOSSLCertificate.fromPEMFile(certificatePath)
            key = try NIOSSLPrivateKey(file: keyPath, format: .pem)
        } catch {
            throw ConfigurationError(
                message: "cannot read the TLS certificate \(certificatePath) or key \(keyPath): "
                    + "\(error)".replacingOccurrences(of: "\n", with: " ")
            )
        }
        guard !chain.isEmpty else {
            throw ConfigurationError(message: "the TLS certificate file \(certificatePath) holds no certificate")
        }
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain.map { .certificate($0) },
            privateKey: .privateKey(key)
        )
        tls.applicationProtocols = SecureHTTPChannel.applicationProtocols
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw ConfigurationError(
                message: "the TLS certificate \(certificatePath) and key \(keyPath) do not form a usable pair: \(error)"
            )
        }
    }

    /// The text of a file shipped in `Public/`.
    static func resource(_ name: String) throws -> String {
        let url = Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Public")
        guard let url, let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw ConfigurationError(message: "the resource \(name) is missing from the build")
        }
        return text
    }
}

extension Logger {
    /// The same handler and level under another label.
    func labelled(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = logLevel
        return logger
    }
}

/// The HTTP server as a service whose run ends once every client connection has closed, so
/// the services after it (the runner, the store) stop only when every answer was written:
/// Hummingbird's own run ends when its listener closes and the tasks it started end, and a
/// connection served on its event loop (a request the gate routed, a stream, a WebSocket) has
/// none. Past `shutdown-timeout` the service group cancels the wait.
struct DrainedHTTPServer<Server: Service>: Service {
    let server: Server
    let connections: ConnectionLimit

    func run() async throws {
        try await server.run()
        await connections.closed()
    }
}
