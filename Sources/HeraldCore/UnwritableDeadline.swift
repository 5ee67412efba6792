package import NIOCore

/// The `write-timeout` bound: closes a connection, or an HTTP/2 stream, that stays unwritable
/// for longer than `timeout`.
///
/// Every transport writes through NIO, which stops taking writes when a connection's outbound
/// buffer passes its high-water mark; a client that stops reading (a zero receive window) would
/// otherwise hold its writer, its hub subscription and its descriptor forever. The deadline
/// arms when the channel turns unwritable and is cancelled when it drains; closing fails what
/// waits to be written, so the transport ends as it does for any lost client.
///
/// It belongs to the handler that sees the channel's writability change: HeraldServer's
/// `WriteDeadline`, first in every pipeline, and then the handler that serves a stream or a
/// WebSocket on the event loop, which takes the bound over (one handler fewer a connection).
package struct UnwritableDeadline {
    package let timeout: TimeAmount
    private var timer: Scheduled<Void>?

    package init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// Arms when `channel` turned unwritable (unless armed), cancels when it drained.
    package mutating func writabilityChanged(of channel: any Channel) {
        if channel.isWritable {
            cancel()
        } else if timer == nil {
            timer = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        }
    }

    package mutating func cancel() {
        timer?.cancel()
        timer = nil
    }
}
