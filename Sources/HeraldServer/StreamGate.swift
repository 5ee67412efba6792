internal import HTTPTypes
internal import HeraldHTTP
internal import Hummingbird
internal import HummingbirdCore
internal import HummingbirdWebSocket
internal import Logging
internal import NIOCore
internal import NIOHTTP1
internal import NIOHTTPTypesHTTP1

/// What serves a connection whose first request is a stream: Herald's router.
struct LoopStreams: Sendable {
    let responder: StreamHeadResponder<RouterResponder<HeraldRequestContext>>
}

/// Looks at a connection's first request, before Hummingbird's upgrade handler: a stream
/// (``StreamTakeover/isCandidate(method:uri:accept:hasBody:)``) is handed to a
/// ``StreamConnection`` on the event loop, so no task and no `NIOAsyncChannel` are made for
/// it; anything else passes on, and the gate steps aside for good.
///
/// On takeover the request has fully arrived, so everything that reads requests leaves the
/// pipeline (the HTTP decoder, the upgrade handler, the ``HTTP1Shield``, which guards requests
/// on their way to a route, and the gate), and the stream handler is all that follows NIO's
/// HTTP/1 encoder: an idle stream costs its socket, the encoder and that handler. No
/// Hummingbird connection state handler either: the connection closes once its answer is
/// written (its idle timer would close a client that reads slowly before the end).
final class StreamGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private let streams: LoopStreams
    private let logger: Logger
    private var held: [HTTPServerRequestPart] = []

    init(streams: LoopStreams, logger: Logger) {
        self.streams = streams
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if held.isEmpty {
            guard case .head(let head) = part, Self.isStream(head) else {
                context.fireChannelRead(data)
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                return
            }
        }
        held.append(part)
        if case .end = part { takeOver(context) }
    }

    static func isStream(_ head: HTTPRequestHead) -> Bool {
        let length = head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0
        let hasBody = length > 0 || head.headers.contains(name: "transfer-encoding")
        return head.headers["upgrade"].isEmpty
            && StreamTakeover.isCandidate(
                method: head.method.rawValue,
                uri: head.uri,
                accept: head.headers.first(name: "accept"),
                hasBody: hasBody
            )
    }

    private func takeOver(_ context: ChannelHandlerContext) {
        let operations = context.pipeline.syncOperations
        guard case .head(let head)? = held.first else { return }
        held = []
        do {
            let request = try HTTPRequest(head, secure: false, splitCookie: false)
            typealias Upgrade = NIOTypedHTTPServerUpgradeHandler<HTTP1WebSocketUpgradeChannel.UpgradeResult>
            for handler in [
                try operations.handler(type: Upgrade.self) as any RemovableChannelHandler,
                try operations.handler(type: ByteTap.self),
                try operations.handler(type: HTTP1Shield.self),
                try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self),
            ] {
                operations.removeHandler(handler, promise: nil)
            }
            try operations.addHandler(
                StreamConnection(request: request, version: head.version, responder: streams.responder, logger: logger),
                position: .after(self)
            )
        } catch {
            logger.error("cannot serve a stream on its event loop", metadata: ["error": "\(error)"])
            return context.close(promise: nil)
        }
        operations.removeHandler(context: context, promise: nil)
    }
}
