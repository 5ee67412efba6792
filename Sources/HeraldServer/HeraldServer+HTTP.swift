internal import Foundation
internal import HTTPTypes
internal import HeraldAccess
internal import HeraldGRPC
internal import HeraldHTTP
internal import HeraldWebSocket
internal import Hummingbird
internal import HummingbirdCore
internal import HummingbirdHTTP2
internal import Logging
internal import NIOCore
internal import NIOSSL

// The HTTP side of the composition root: the router of short requests, and the channel
// pipeline every connection gets (TLS and HTTP/2, the HTTP/1 shield, WebSocket upgrades).
extension HeraldServer {
    /// The REST API, gRPC-Web, and the public files, on one router.
    static func router(api: HeraldAPI, grpcWeb: GRPCWebTransport) throws -> Router<HeraldRequestContext> {
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
        return router
    }

    /// How each accepted connection is served, and the scheme of the URL it is served on.
    func httpServer(
        webSocket: WebSocketEndpoint,
        access: Access,
        connections: ConnectionLimit,
        responder: StreamHeadResponder<RouterResponder<HeraldRequestContext>>
    ) throws -> (builder: HTTPServerBuilder, scheme: String) {
        let idleTimeout = TimeAmount(configuration.http.idleTimeout)
        let streams = LoopStreams(responder: responder, idleTimeout: idleTimeout)
        let refusedUpgrades = RefusedUpgrades()
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [UpgradeRefusalHandler(refused: refusedUpgrades)],
            idleTimeout: idleTimeout
        )
        let shieldLimits = HTTP1ShieldLimits(
            headTimeout: TimeAmount(configuration.http.headTimeout),
            minBodyBytesPerWindow: configuration.http.minBodyRate
                * Int(configuration.http.headTimeout.components.seconds),
            maxBodyBytes: configuration.http.maxBodyBytes,
            maxHeaderFieldSize: http1.httpDecoder.maxHeaderFieldSize
        )
        let upgrade = WebSocketUpgradeChannel.Upgrade(
            decide: { request, channel in
                if let problem = webSocket.refusal(for: request) {
                    refusedUpgrades.record(problem, for: channel)
                    return nil
                }
                guard let extensions = WebSocketEndpoint.extensionsResponse(to: request) else { return [:] }
                return [.secWebSocketExtensions: extensions]
            },
            handler: { request, channel, writeTimeout in
                let address = access.limits.addresses.client(
                    peer: channel.remoteAddress?.ipAddress,
                    forwardedFor: request.headerFields[HTTPField.Name("X-Forwarded-For")!]
                )
                return webSocket.handler(
                    bearer: WebSocketEndpoint.bearer(of: request),
                    address: address,
                    deflates: WebSocketEndpoint.extensionsResponse(to: request) != nil,
                    writeTimeout: writeTimeout
                )
            },
            // A frame as large as a message (deflate may grow one a little); larger: 1009.
            maxFrameSize: configuration.webSocket.maxMessageBytes + 1024
        )
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
                            inner: WebSocketUpgradeChannel(responder: responder, http1: http1, upgrade: upgrade),
                            limits: shieldLimits,
                            streams: streams
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
                        inner: WebSocketUpgradeChannel(responder: responder, http1: http1, upgrade: upgrade),
                        limits: shieldLimits,
                        streams: streams
                    ),
                    idleTimeout: idleTimeout,
                    limit: connections,
                    writeTimeout: TimeAmount(configuration.http.writeTimeout),
                    answersRefusals: true
                )
            }
            scheme = "http"
        }
        return (server, scheme)
    }
}
