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
internal import HummingbirdWSCompression
internal import HummingbirdWebSocket
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
        let store = storage.store
        let resolver = TargetResolver(allowPrivateTargets: configuration.allowPrivateTargets)
        let webhooks = WebhookDispatcher(
            store: store,
            resolver: resolver,
            configuration: configuration.webhooks,
            logger: logger.labelled("herald.webhooks")
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
        let readiness = Readiness(expectsGRPC: configuration.grpcPort != 0, announce: onListening)
        let api = HeraldAPI(
            store: store,
            events: events,
            hub: hub,
            checks: checks,
            access: access,
            configuration: configuration.http,
            logger: logger.labelled("herald.http"),
            isReady: cluster.isReady,
            nodes: storage.nodesJSON(thisNode: configuration.nodeID, address: { readiness.url })
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
        let grpcWeb = GRPCWebTransport(maxMessageBytes: configuration.http.maxBodyBytes)

        let router = Router(context: HeraldRequestContext.self, options: .autoGenerateHeadEndpoints)
        api.register(on: router)
        grpcWeb.register(on: router)
        // Reached by a plain GET; a refused upgrade is answered by UpgradeRefusalHandler.
        router.get(RouterPath(WebSocketEndpoint.path)) { _, _ -> Response in
            throw Problem(status: .upgradeRequired, code: "upgrade-required", detail: "connect with a WebSocket client")
        }
        // The public surface as files: the OpenAPI document, the gRPC service's proto, from
        // which any language generates a client, a page calling it with gRPC-Web, the browser
        // client (a classic script, its ES module face and its types) and the transport lab.
        for (path, name, type) in [
            ("/openapi.yaml", "openapi.yaml", "application/yaml"),
            ("/api/v1/herald.proto", "herald.proto", "text/plain; charset=utf-8"),
            ("/grpc-web", "grpc-web.html", "text/html; charset=utf-8"),
            ("/grpc-web.js", "grpc-web.js", "text/javascript; charset=utf-8"),
            ("/herald.js", "herald.js", "text/javascript; charset=utf-8"),
            ("/herald.mjs", "herald.mjs", "text/javascript; charset=utf-8"),
            ("/herald.d.ts", "herald.d.ts", "application/typescript; charset=utf-8"),
            ("/lab", "lab.html", "text/html; charset=utf-8"),
        ] {
            let file = try Self.resource(name)
            router.get(RouterPath(path)) { _, _ in
                Response(
                    status: .ok,
                    headers: [.contentType: type, .cacheControl: "no-cache"],
                    body: .init(byteBuffer: ByteBuffer(string: file))
                )
            }
        }
        router.answerUnservedMethods()

        let connections = connectionLimit()
        let host = configuration.host
        let refusedUpgrades = RefusedUpgrades()
        let idleTimeout = TimeAmount(configuration.http.idleTimeout)
        let webSocketChannel = HTTP1WebSocketUpgradeChannel.Configuration(
            http1: .init(
                additionalChannelHandlers: [UpgradeRefusalHandler(refused: refusedUpgrades)],
                idleTimeout: idleTimeout
            ),
            ws: .init(
                // A frame as large as a message (deflate may grow one a little); larger: 1009.
                maxFrameSize: configuration.webSocket.maxMessageBytes + 1024,
                extensions: WebSocketEndpoint.extensions(maxMessageBytes: configuration.webSocket.maxMessageBytes),
                autoPing: .enabled(timePeriod: configuration.http.heartbeat),
                validateUTF8: true
            )
        )
        let shieldLimits = HTTP1ShieldLimits(
            headTimeout: TimeAmount(configuration.http.headTimeout),
            minBodyBytesPerWindow: configuration.http.minBodyRate
                * Int(configuration.http.headTimeout.components.seconds),
            maxBodyBytes: configuration.http.maxBodyBytes,
            maxHeaderFieldSize: webSocketChannel.http1.httpDecoder.maxHeaderFieldSize
        )
        let shouldUpgrade:
            @Sendable (HTTPRequest, any Channel, Logger) throws -> ShouldUpgradeResult<
                WebSocketDataHandler<HTTP1WebSocketUpgradeChannel.Context>
            > = { request, channel, _ in
                if let problem = webSocket.refusal(for: request) {
                    refusedUpgrades.record(problem, for: channel)
                    return .dontUpgrade
                }
                let bearer = WebSocketEndpoint.bearer(of: request)
                let address = access.limits.addresses.client(
                    peer: channel.remoteAddress?.ipAddress,
                    forwardedFor: request.headerFields[HTTPField.Name("X-Forwarded-For")!]
                )
                return .upgrade([:]) { inbound, outbound, _ in
                    try await webSocket.serve(inbound, outbound, bearer: bearer, address: address)
                }
            }
        let server: HTTPServerBuilder
        let scheme: String
        if let certificatePath = configuration.tlsCertificatePath, let keyPath = configuration.tlsKeyPath {
            let context = try Self.tlsContext(certificatePath: certificatePath, keyPath: keyPath)
            // Each HTTP/2 stream has its own write deadline: flow control stops a stream whose
            // client does not read it while the connection, and its deadline, stays writable.
            let writeTimeout = TimeAmount(configuration.http.writeTimeout)
            let http2 = HTTP2ChannelConfiguration(
                idleTimeout: configuration.http.idleTimeout,
                streamConfiguration: .init(
                    additionalChannelHandlers: [WriteDeadline(timeout: writeTimeout)],
                    idleTimeout: idleTimeout
                )
            )
            server = HTTPServerBuilder { responder in
                GuardedChildChannel(
                    inner: SecureHTTPChannel(
                        context: context,
                        http1: ShieldedHTTP1Channel(
                            inner: HTTP1WebSocketUpgradeChannel(
                                responder: responder,
                                configuration: webSocketChannel,
                                shouldUpgrade: shouldUpgrade
                            ),
                            limits: shieldLimits
                        ),
                        http2: HTTP2Channel(responder: responder, configuration: http2)
                    ),
                    idleTimeout: idleTimeout,
                    limit: connections,
                    writeTimeout: TimeAmount(configuration.http.writeTimeout),
                    answersRefusals: false
                )
            }
            scheme = "https"
        } else {
            server = HTTPServerBuilder { responder in
                GuardedChildChannel(
                    inner: ShieldedHTTP1Channel(
                        inner: HTTP1WebSocketUpgradeChannel(
                            responder: responder,
                            configuration: webSocketChannel,
                            shouldUpgrade: shouldUpgrade
                        ),
                        limits: shieldLimits
                    ),
                    idleTimeout: idleTimeout,
                    limit: connections,
                    writeTimeout: TimeAmount(configuration.http.writeTimeout),
                    answersRefusals: true
                )
            }
            scheme = "http"
        }
        let app = Application(
            responder: StreamHeadResponder(router.buildResponder()),
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
        // Shut down last to first: WebSockets close, the hub ends every stream, gRPC stops
        // taking calls, HTTP drains, gRPC-Web (over HTTP) stops, then the workers.
        var services: [ServiceGroupConfiguration.ServiceConfiguration] =
            cluster.services.map { .init(service: $0) }
            + storage.clusterServices(runner: runner, address: { readiness.url }, logger: logger).map {
                .init(service: $0)
            }
        services += [
            .init(service: runner),
            .init(service: webhooks),
            .init(
                service: Janitor(
                    store: store,
                    logger: logger.labelled("herald.janitor"),
                    interval: configuration.retention.janitorInterval,
                    lagCap: configuration.webhooks.lagCap,
                    mayRun: storage.janitorTurn(interval: configuration.retention.janitorInterval)
                )
            ),
            .init(service: GRPCWebEndpoint(transport: grpcWeb, service: grpcService)),
            .init(service: app),
        ]
        if configuration.grpcPort != 0 {
            let grpc = GRPCEndpoint(
                service: grpcService,
                host: host,
                port: configuration.grpcPort,
                tls: configuration.tlsCertificatePath.flatMap { certificate in
                    configuration.tlsKeyPath.map { GRPCEndpoint.TLSFiles(certificatePath: certificate, keyPath: $0) }
                },
                keepalive: configuration.http.heartbeat,
                maxMessageBytes: configuration.http.maxBodyBytes,
                onListening: { port in readiness.grpc(port) }
            )
            services.append(.init(service: grpc))
        }
        services += [.init(service: hub), .init(service: webSocket)]
        var lifecycle = ServiceGroupConfiguration(
            services: services,
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger.labelled("herald.lifecycle")
        )
        // A client that stops reading must not hold SIGTERM forever: past shutdown-timeout
        // every service is cancelled, and past five more seconds the process ends anyway.
        lifecycle.maximumGracefulShutdownDuration = configuration.http.shutdownTimeout
        lifecycle.maximumCancellationDuration = .seconds(5)
        let group = ServiceGroup(configuration: lifecycle)
        do {
            try await group.run()
        } catch let error as HeraldError where error.code == .unavailable {
            throw ConfigurationError(message: error.message)
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            throw ConfigurationError(message: "cannot listen on \(host):\(configuration.port): the address is in use")
        } catch let error as IOError {
            throw ConfigurationError(message: "cannot listen on \(host):\(configuration.port): \(error.description)")
        }
        await storage.close(logger: logger)
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

/// An exclusive `flock` on `herald.lock` in the data directory, so two processes never share
/// one SQLite store by mistake. The kernel releases it when the process ends, even by `kill -9`.
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

extension Logger {
    /// The same handler and level under another label.
    func labelled(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = logLevel
        return logger
    }
}

/// Announces readiness once, when the HTTP port and (unless off) the gRPC port are bound.
final class Readiness: Sendable {
    private struct State {
        var url: String?
        var grpcPort: Int?
        var isAnnounced = false
    }

    private let state = Mutex(State())
    private let expectsGRPC: Bool
    private let announce: @Sendable (String, Int?) -> Void

    init(expectsGRPC: Bool, announce: @escaping @Sendable (String, Int?) -> Void) {
        self.expectsGRPC = expectsGRPC
        self.announce = announce
    }

    func http(_ url: String) { update { $0.url = url } }

    /// The HTTP base URL, once the port is bound.
    var url: String { state.withLock { $0.url ?? "" } }

    func grpc(_ port: Int) { update { $0.grpcPort = port } }

    private func update(_ change: (inout State) -> Void) {
        let ready = state.withLock { state -> (String, Int?)? in
            change(&state)
            guard !state.isAnnounced, let url = state.url, !expectsGRPC || state.grpcPort != nil else { return nil }
            state.isAnnounced = true
            return (url, state.grpcPort)
        }
        if let (url, port) = ready { announce(url, port) }
    }
}
