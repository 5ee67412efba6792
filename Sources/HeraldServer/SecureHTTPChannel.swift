internal import HummingbirdCore
internal import HummingbirdHTTP2
internal import Logging
internal import NIOCore
internal import NIOSSL
internal import NIOTLS

/// The HTTP port with TLS: ALPN picks HTTP/2 or HTTP/1.1 per connection, and the HTTP/1.1
/// side can upgrade to WebSocket, so `wss://` works on the same port as `https://`.
///
/// Hummingbird's own `HTTP2UpgradeChannel` pairs HTTP/2 with a plain `HTTP1Channel`, which
/// has no WebSocket upgrader; this pairs it with the WebSocket upgrade channel instead.
struct SecureHTTPChannel: ServerChildChannel {
    /// Browsers negotiate h2 for everything but WebSocket, which RFC 8441 would need on h2.
    static let applicationProtocols = ["h2", "http/1.1"]

    enum Negotiated: Sendable {
        case http1(ShieldedHTTP1Channel.Value)
        case http2(HTTP2Channel.Value)
    }

    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<Negotiated>
        let channel: any Channel
    }

    let context: NIOSSLContext
    let http1: ShieldedHTTP1Channel
    let http2: HTTP2Channel

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            let negotiation = NIOTypedApplicationProtocolNegotiationHandler<Negotiated> { result, channel in
                switch result {
                case .negotiated("h2"):
                    return http2.setup(channel: channel, logger: logger).map { .http2($0) }
                case .negotiated("http/1.1"), .fallback:
                    return http1.setup(channel: channel, logger: logger).map { .http1($0) }
                case .negotiated:  // not offered: a client that picks it anyway is closed
                    channel.close(promise: nil)
                    return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
                }
            }
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
            try channel.pipeline.syncOperations.addHandler(negotiation)
            return Value(negotiated: negotiation.protocolNegotiationResult, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .http1(let http1Value): await http1.handle(value: http1Value, logger: logger)
            case .http2(let http2Value): await http2.handle(value: http2Value, logger: logger)
            }
        } catch {
            logger.debug("TLS or ALPN negotiation failed", metadata: ["error": "\(error)"])
        }
    }
}
