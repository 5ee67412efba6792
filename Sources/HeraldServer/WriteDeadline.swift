internal import HeraldCore
internal import NIOCore

/// Closes a connection, or an HTTP/2 stream, that stays unwritable for longer than
/// `write-timeout` (``UnwritableDeadline``).
///
/// Watching writability here covers every transport on the connection (SSE, NDJSON,
/// forever-iframe, long-poll answers, WebSocket frames) in one place. On an HTTP/2 stream
/// channel, whose writability follows its flow-control window, closing resets the stream. A
/// handler that takes a connection over on the event loop (a stream, a WebSocket) takes the
/// bound over too, with ``handOver(_:)``.
final class WriteDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private var deadline: UnwritableDeadline

    init(timeout: TimeAmount) {
        deadline = UnwritableDeadline(timeout: timeout)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        deadline.writabilityChanged(of: context.channel)
        context.fireChannelWritabilityChanged()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline.cancel()
    }

    /// Takes the handler out of `pipeline`, if it is there: its bound, for the handler that
    /// serves the connection from now (and sees its writability change).
    static func handOver(_ pipeline: ChannelPipeline.SynchronousOperations) -> TimeAmount? {
        guard let handler = try? pipeline.handler(type: WriteDeadline.self) else { return nil }
        pipeline.removeHandler(handler, promise: nil)
        return handler.deadline.timeout
    }
}
