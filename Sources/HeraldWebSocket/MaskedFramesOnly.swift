internal import NIOCore
internal import NIOWebSocket

/// Closes the connection with 1002 (protocol error) at the first client frame without a mask,
/// data or control (RFC 6455 section 5.1: "a server MUST close the connection upon receiving a
/// frame that is not masked"). It sits in the channel pipeline right before ``WebSocketConnection``.
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
