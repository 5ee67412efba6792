internal import HTTPTypes
internal import HeraldCore
internal import HeraldHTTP
internal import HummingbirdCore
internal import Logging
internal import NIOCore

/// Wraps a child channel so that a connection past `max-connections` is refused at once, and
/// one which has sent nothing yet can neither hold Herald open at shutdown nor stay open
/// forever.
///
/// Until a connection's first request arrives, Hummingbird's pipeline is still deciding
/// whether to upgrade it, and neither its idle timeout nor its graceful-shutdown handling is
/// installed: a browser's speculative preconnect, which never sends a byte, kept `SIGTERM`
/// waiting until the browser let go. ``FirstBytesGuard`` closes such a connection on shutdown
/// or after `idleTimeout`, and steps aside at the first byte.
struct GuardedChildChannel<Inner: ServerChildChannel>: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        /// Nil for a connection refused by the limit.
        let inner: Inner.Value?
        let channel: any Channel
    }

    let inner: Inner
    let idleTimeout: TimeAmount
    let limit: ConnectionLimit
    /// How long the connection may stay unwritable (`write-timeout`).
    let writeTimeout: TimeAmount
    /// Whether a refused connection is answered (plain HTTP) before it closes (TLS: it is not).
    let answersRefusals: Bool

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let address = channel.remoteAddress?.ipAddress
        if let refusal = limit.admit(address) {
            refuse(channel, answer: answersRefusals ? Self.answer(to: refusal, maximum: limit.maximum) : nil)
            return channel.eventLoop.makeSucceededFuture(Value(inner: nil, channel: channel))
        }
        // Kept until the connection closes: it captures the limit alone (naming `limit` in the
        // closure would capture this whole struct, some 290 bytes a connection).
        let limit = self.limit
        channel.closeFuture.whenComplete { _ in limit.release(address) }
        do {
            // NIO keeps each connection's receive buffer between reads: 512 B rather than 2 KiB
            // for a connection that mostly holds a stream (it grows for larger requests).
            try channel.syncOptions?.setOption(ChannelOptions.recvAllocator, value: Self.receiveBuffers)
            try channel.pipeline.syncOperations.addHandler(WriteDeadline(timeout: writeTimeout))
            try channel.pipeline.syncOperations.addHandler(FirstBytesGuard(idleTimeout: idleTimeout))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return inner.setup(channel: channel, logger: logger).map { Value(inner: $0, channel: channel) }
    }

    static var receiveBuffers: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65_536)
    }

    func handle(value: Value, logger: Logger) async {
        guard let innerValue = value.inner else { return }
        await inner.handle(value: innerValue, logger: logger)
    }

    /// Answers and closes a connection past a bound, through a ``ConnectionRefusal``.
    private func refuse(_ channel: any Channel, answer: String?) {
        do {
            try channel.pipeline.syncOperations.addHandler(ConnectionRefusal(answer: answer))
        } catch {
            channel.close(promise: nil)
        }
    }

    /// The raw HTTP/1.1 answer to a connection past a bound: 503 past a cap, 429 past the rate.
    static func answer(to refusal: ConnectionLimit.Refusal, maximum: Int) -> String {
        let error: HeraldError
        switch refusal {
        case .full:
            error = HeraldError(
                .unavailable,
                "Herald holds \(maximum) connections, its max-connections; try again shortly",
                retryAfter: 1
            )
        case .addressFull(let cap):
            error = HeraldError(
                .unavailable,
                "this address holds \(cap) connections, the max-connections-per-ip; close one first",
                retryAfter: 1
            )
        case .tooFast(let seconds):
            error = HeraldError(
                .rateLimited,
                "this address opens connections faster than rate-limit-connects; retry after \(seconds) s",
                retryAfter: seconds
            )
        }
        // The problem the router would render, written raw: no handler exists yet.
        let problem = Problem(error)
        let body = problem.json
        let fields = problem.headers.map { "\($0.name.canonicalName): \($0.value)\r\n" }.joined()
        return "HTTP/1.1 \(problem.status.code) \(problem.status.reasonPhrase)\r\n" + fields
            + "content-type: application/problem+json\r\nconnection: close\r\n"
            + "content-length: \(body.utf8.count)\r\n\r\n" + body
    }
}

/// The first handler of a connection until its first bytes arrive; see ``GuardedChildChannel``.
final class FirstBytesGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let idleTimeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(idleTimeout: TimeAmount) {
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: idleTimeout) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// The only handler of a connection past `max-connections`: once it is active, sends the
/// answer (if any), closes its output and discards its input for a second before closing it,
/// so that closing with the request unread does not reset the connection before the client
/// reads the answer.
final class ConnectionRefusal: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let answer: String?
    private var refused = false

    init(answer: String?) {
        self.answer = answer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        refuse(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    private func refuse(_ context: ChannelHandlerContext) {
        guard !refused else { return }
        refused = true
        let channel = context.channel
        guard let answer else { return channel.close(promise: nil) }
        context.writeAndFlush(NIOAny(channel.allocator.buffer(string: answer))).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
            channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        }
    }
}
