internal import CompressNIO
internal import HTTPTypes
internal import HummingbirdWSCompression
package import HummingbirdWebSocket
package import NIOCore
internal import NIOWebSocket

extension WebSocketEndpoint {
    /// The extensions of every connection: permessage-deflate bounded by the message limit
    /// (a larger message closes with 1009, not the library's 1011 at 16 KiB). Masking is
    /// checked below the extensions, by ``MaskedFramesOnly``.
    package static func extensions(maxMessageBytes: Int) -> [WebSocketExtensionFactory] {
        [WebSocketExtensionFactory { BoundedDeflateBuilder(maxMessageBytes: maxMessageBytes) }]
    }

    /// Puts ``MaskedFramesOnly`` right after the frame decoder of a connection that has just
    /// upgraded (on `HTTPServerUpgradeEvents.upgradeComplete`, before any frame is read on).
    package static func requireMaskedFrames(_ pipeline: ChannelPipeline.SynchronousOperations) throws {
        let decoder = try pipeline.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self)
        try pipeline.addHandler(MaskedFramesOnly(), position: .after(decoder.handler))
    }
}

/// permessage-deflate whose inflated messages may be as large as the message limit, and whose
/// overflow is a "message too big" (1009).
struct BoundedDeflateBuilder: WebSocketExtensionBuilder {
    static let name = "permessage-deflate"
    let inner: any WebSocketExtensionBuilder

    init(maxMessageBytes: Int) {
        // One byte more: the library refuses an output of exactly its limit.
        inner = WebSocketExtensionFactory.perMessageDeflate(maxDecompressedFrameSize: maxMessageBytes + 1).build()
    }

    func clientRequestHeader() -> String { inner.clientRequestHeader() }

    func serverReponseHeader(to request: WebSocketExtensionHTTPParameters) -> String? {
        inner.serverReponseHeader(to: request)
    }

    func serverExtension(from request: WebSocketExtensionHTTPParameters) throws -> (any WebSocketExtension)? {
        try inner.serverExtension(from: request).map(BoundedDeflate.init)
    }

    func clientExtension(from request: WebSocketExtensionHTTPParameters) throws -> (any WebSocketExtension)? {
        try inner.clientExtension(from: request)
    }
}

struct BoundedDeflate: WebSocketExtension {
    let inner: any WebSocketExtension

    var name: String { inner.name }
    // Forwarded: without RSV1 every compressed frame would be a protocol error.
    var reservedBits: WebSocketFrame.ReservedBits { inner.reservedBits }

    func processReceivedFrame(
        _ frame: WebSocketFrame,
        context: WebSocketExtensionContext
    ) async throws -> WebSocketFrame {
        do {
            return try await inner.processReceivedFrame(frame, context: context)
        } catch let error as CompressNIOError where error == .bufferOverflow {
            throw NIOWebSocketError.invalidFrameLength  // the library closes with 1009
        }
    }

    func processFrameToSend(_ frame: WebSocketFrame, context: WebSocketExtensionContext) async throws -> WebSocketFrame
    {
        try await inner.processFrameToSend(frame, context: context)
    }

    func shutdown() async { await inner.shutdown() }
}

/// Closes the connection with 1002 (protocol error) at the first client frame without a mask,
/// data or control (RFC 6455 section 5.1: "a server MUST close the connection upon receiving a
/// frame that is not masked"). It sits in the channel pipeline, under hummingbird-websocket,
/// which answers pings and closes before its extensions could see them.
final class MaskedFramesOnly: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private var refused = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        guard unwrapInboundIn(data).maskKey != nil else {
            refused = true
            var code = context.channel.allocator.buffer(capacity: 2)
            code.write(webSocketErrorCode: .protocolError)
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: code)
            context.writeAndFlush(wrapOutboundOut(close), promise: nil)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}
