internal import CompressNIO
internal import HTTPTypes
internal import HummingbirdWSCompression
package import HummingbirdWebSocket
internal import NIOWebSocket

extension WebSocketEndpoint {
    /// The extensions of every connection: permessage-deflate bounded by the message limit
    /// (a larger message closes with 1009, not the library's 1011 at 16 KiB), and a check
    /// that every client frame is masked (1002 otherwise, RFC 6455 section 5.1).
    ///
    /// The mask check comes last: received frames pass the extensions in reverse order, so it
    /// sees each frame before deflate (which clears the mask key) does.
    package static func extensions(maxMessageBytes: Int) -> [WebSocketExtensionFactory] {
        [
            WebSocketExtensionFactory { BoundedDeflateBuilder(maxMessageBytes: maxMessageBytes) },
            .nonNegotiatedExtension { MaskedClientFrames() },
        ]
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

/// Refuses a client data frame without a mask (1002, protocol error). Control frames do not
/// pass extensions, so an unmasked ping or close is not caught here.
struct MaskedClientFrames: WebSocketExtension {
    let name = "herald-masked-client-frames"

    func processReceivedFrame(
        _ frame: WebSocketFrame,
        context: WebSocketExtensionContext
    ) async throws -> WebSocketFrame {
        // The library maps this error to 1002; its own protocol error type is not public.
        guard frame.maskKey != nil else { throw NIOWebSocketError.multiByteControlFrameLength }
        return frame
    }

    func processFrameToSend(_ frame: WebSocketFrame, context: WebSocketExtensionContext) async throws -> WebSocketFrame
    {
        frame
    }

    func shutdown() async {}
}
