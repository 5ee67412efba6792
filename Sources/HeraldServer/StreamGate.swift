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
/// On takeover the upgrade handler and the ``HTTP1Shield`` leave the pipeline (the request
/// has fully arrived; the shield guards requests on their way to a route), and the gate puts
/// the HTTP/1 codec and the stream handler in their place. Hummingbird's connection state
/// handler is not needed: the request has arrived, and the connection closes when its answer
/// has been written (its idle timer would close a client that reads slowly before the end).
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
        let isChunked = head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1)
        do {
            typealias Upgrade = NIOTypedHTTPServerUpgradeHandler<HTTP1WebSocketUpgradeChannel.UpgradeResult>
            for handler in [
                try operations.handler(type: Upgrade.self) as any RemovableChannelHandler,
                try operations.handler(type: ByteTap.self),
                try operations.handler(type: HTTP1Shield.self),
            ] {
                operations.removeHandler(handler, promise: nil)
            }
            try operations.addHandlers(
                [
                    HTTP1ToHTTPServerCodec(secure: false),
                    StreamConnection(responder: streams.responder, logger: logger, isChunked: isChunked),
                ],
                position: .after(self)
            )
        } catch {
            logger.error("cannot serve a stream on its event loop", metadata: ["error": "\(error)"])
            return context.close(promise: nil)
        }
        for part in held { context.fireChannelRead(wrapInboundOut(part)) }
        held = []
        operations.removeHandler(context: context, promise: nil)
    }
}
