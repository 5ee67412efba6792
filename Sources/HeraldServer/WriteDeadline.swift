internal import NIOCore

/// Closes a connection, or an HTTP/2 stream, that stays unwritable for longer than `write-timeout`.
///
/// Every transport writes through NIO, which stops taking writes when a connection's
/// outbound buffer passes its high-water mark; a client that stops reading (a zero receive
/// window) then holds its writer suspended forever, with its stream, its hub subscription and
/// its descriptor. Watching writability here covers every transport on the connection (SSE,
/// NDJSON, forever-iframe, long-poll answers, WebSocket frames) in one place: the deadline
/// arms when the connection turns unwritable and is cancelled when it drains. Closing fails
/// the suspended write, so the transport ends as it does for any lost client. On an HTTP/2
/// stream channel, whose writability follows its flow-control window, closing resets the stream.
final class WriteDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            timer?.cancel()
            timer = nil
        } else if timer == nil {
            let channel = context.channel
            timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        }
        context.fireChannelWritabilityChanged()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }
}
