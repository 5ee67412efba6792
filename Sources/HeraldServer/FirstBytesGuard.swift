internal import HummingbirdCore
internal import Logging
internal import NIOCore

/// Wraps a child channel so that a connection which has sent nothing yet can neither hold
/// Herald open at shutdown nor stay open forever.
///
/// Until a connection's first request arrives, Hummingbird's pipeline is still deciding
/// whether to upgrade it, and neither its idle timeout nor its graceful-shutdown handling is
/// installed: a browser's speculative preconnect, which never sends a byte, kept `SIGTERM`
/// waiting until the browser let go. ``FirstBytesGuard`` closes such a connection on shutdown
/// or after `idleTimeout`, and steps aside at the first byte.
struct GuardedChildChannel<Inner: ServerChildChannel>: ServerChildChannel {
    let inner: Inner
    let idleTimeout: TimeAmount

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Inner.Value> {
        do {
            try channel.pipeline.syncOperations.addHandler(FirstBytesGuard(idleTimeout: idleTimeout))
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return inner.setup(channel: channel, logger: logger)
    }

    func handle(value: Inner.Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
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
