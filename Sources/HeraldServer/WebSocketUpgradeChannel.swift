internal import HTTPTypes
internal import Hummingbird
internal import HummingbirdCore
internal import Logging
internal import NIOCore
internal import NIOHTTP1
internal import NIOHTTPTypes
internal import NIOHTTPTypesHTTP1
internal import NIOWebSocket

/// Hummingbird's HTTP/1 channel, upgradable to a WebSocket served by Herald's own handlers.
///
/// The pipeline is the one hummingbird-websocket builds (NIO's upgradable HTTP/1 pipeline with
/// the WebSocket upgrader; after a refusal or a plain first request, the HTTP codec, the
/// additional handlers, Hummingbird's state handler and a `NIOAsyncChannel` for the router),
/// but an upgraded connection gets the handlers `upgrade` makes, which serve it on the event
/// loop: its task ends as soon as the upgrade is done, and no `NIOAsyncChannel` is made for it.
///
/// Only a connection's first request can upgrade (NIO's upgrade handler decides on it); a later
/// upgrade request is answered `307` to the same URL with `Connection: close`, so the client
/// comes back on a fresh connection, as hummingbird-websocket does.
struct WebSocketUpgradeChannel: ServerChildChannel, HTTPChannelHandler {
    enum UpgradeResult: Sendable {
        /// Served by the handlers the upgrade added.
        case webSocket
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        /// `decide` refused the upgrade: answered `400`, which `UpgradeRefusalHandler` replaces
        /// with its reason.
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    /// How an upgrade request is answered, on its connection's loop.
    struct Upgrade: Sendable {
        /// The headers of the `101` (extensions), or nil to refuse.
        let decide: @Sendable (HTTPRequest, any Channel) -> HTTPFields?
        /// The handler that serves the connection once upgraded, added after NIO's frame codec
        /// (without NIO's protocol error handler: it answers the decoder's errors itself), and
        /// closes it once unwritable for the `write-timeout` given, taken over from the
        /// pipeline's `WriteDeadline`.
        let handler: @Sendable (HTTPRequest, any Channel, _ writeTimeout: TimeAmount?) -> any ChannelHandler
        /// The largest frame the decoder reads; a larger one closes with 1009.
        let maxFrameSize: Int
    }

    let responder: HTTPChannelHandler.Responder
    let http1: HTTP1Channel.Configuration
    let upgrade: Upgrade

    init(responder: @escaping HTTPChannelHandler.Responder, http1: HTTP1Channel.Configuration, upgrade: Upgrade) {
        self.responder = Self.redirectingLaterUpgrades(responder)
        self.http1 = http1
        self.upgrade = upgrade
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let attempted = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
            let upgrade = self.upgrade
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: upgrade.maxFrameSize,
                enableAutomaticErrorHandling: false,
                shouldUpgrade: { channel, head in
                    attempted.value = true
                    guard let request = try? HTTPRequest(head, secure: false, splitCookie: false),
                        let headers = upgrade.decide(request, channel)
                    else { return channel.eventLoop.makeSucceededFuture(nil) }
                    return channel.eventLoop.makeSucceededFuture(HTTPHeaders(headers))
                },
                upgradePipelineHandler: { channel, head in
                    channel.eventLoop.makeCompletedFuture {
                        let request = try HTTPRequest(head, secure: false, splitCookie: false)
                        let operations = channel.pipeline.syncOperations
                        let writeTimeout = WriteDeadline.handOver(operations)
                        try operations.addHandler(upgrade.handler(request, channel, writeTimeout))
                        return .webSocket
                    }
                }
            )
            let http1 = self.http1
            let configuration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let operations = channel.pipeline.syncOperations
                        try operations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try operations.addHandlers(http1.additionalChannelHandlers())
                        try operations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: http1.idleTimeout.map { .init($0) }, logger: logger)
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        return attempted.value ? .refused(asyncChannel) : .notUpgraded(asyncChannel)
                    }
                }
            )
            var pipeline = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(
                upgradeConfiguration: configuration
            )
            pipeline.enablePipelining = false  // NIOAsyncChannel pipelines HTTP
            pipeline.enableErrorHandling = false  // HTTP1Shield answers parse errors
            pipeline.enableResponseHeaderValidation = false  // HTTPTypes validates
            pipeline.decoderConfiguration.maxHeaderFieldSize = http1.httpDecoder.maxHeaderFieldSize
            pipeline.decoderConfiguration.maxHeaderListSize = http1.httpDecoder.maxHeaderListSize
            pipeline.decoderConfiguration.maxHeaderFieldCount = http1.httpDecoder.maxHeaderFieldCount
            let result = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(
                configuration: pipeline
            )
            return Value(upgradeResult: result, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .webSocket:
                return  // served by its handlers, on the loop
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .refused(let http1):
                try await http1.executeThenClose { _, outbound in
                    let head = HTTPResponse(
                        status: .badRequest,
                        headerFields: [.connection: "close", .contentLength: "0"]
                    )
                    try await outbound.write(contentsOf: [.head(head), .end(nil)])
                }
            }
        } catch {
            logger.debug("the connection ended before or during its upgrade", metadata: ["error": "\(error)"])
        }
    }

    /// Answers an upgrade request that is not a connection's first with `307` to the same URL
    /// and `Connection: close`; NIO's upgrade handler only decides on the first request.
    private static func redirectingLaterUpgrades(
        _ responder: @escaping HTTPChannelHandler.Responder
    ) -> HTTPChannelHandler.Responder {
        { request, writer, channel in
            guard request.headers[.upgrade]?.lowercased() == "websocket" else {
                return try await responder(request, writer, channel)
            }
            var location = request.uri.path
            if let query = request.uri.query { location += "?\(query)" }
            let response = HTTPResponse(
                status: .temporaryRedirect,
                headerFields: [.connection: "close", .location: location]
            )
            try await writer.writeResponse(response)
            throw LaterUpgrade()
        }
    }

    /// Ends the connection after the `307`.
    private struct LaterUpgrade: Error {}
}
