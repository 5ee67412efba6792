internal import Foundation
package import HTTPTypes
internal import HeraldCore
internal import HeraldHub
package import Hummingbird
package import Logging
package import NIOCore
package import NIOHTTP1
internal import NIOHTTPTypesHTTP1

/// Serves an HTTP/1.1 connection whose first request is a stream (`GET .../events` as SSE,
/// NDJSON or forever-iframe) on its event loop: no task and no `NIOAsyncChannel` live as long
/// as the stream, only this handler.
///
/// The request goes through the router in a short task, with a ``StreamTakeover`` set, so
/// every middleware (CORS, problems, authorization) runs as for any request. A stream route
/// leaves its ``StreamPlan`` there and returns the headers; the handler writes them and
/// follows the channel itself (`StreamConnection+Follow.swift`). Any other answer (a problem,
/// a `204`, a poll) is written as it is. Either way the response says `Connection: close`,
/// and the connection closes after it: there is no task left to read a next request.
///
/// On shutdown the hub's drain ends the stream, and the connection closes once the end is
/// written; a connection still being routed then closes at once.
package final class StreamConnection<Responder: HTTPResponder>: ChannelDuplexHandler, RemovableChannelHandler
where Responder.Context == HeraldRequestContext {
    /// Whatever the client sends after its request: never read (no request follows a stream).
    package typealias InboundIn = ByteBuffer
    package typealias OutboundIn = HTTPServerResponsePart
    package typealias OutboundOut = HTTPServerResponsePart

    /// Until it is routed: an idle stream keeps nothing of its request.
    private var request: HTTPRequest?
    /// The client's HTTP version: an HTTP/1.1 body without a length is chunked by the encoder,
    /// an HTTP/1.0 one ends with the connection.
    private let version: HTTPVersion
    private let responder: Responder
    let logger: Logger
    private var isRouted = false
    var context: ChannelHandlerContext?
    /// The stream being served, once its plan arrived.
    var follow: Follow?
    /// The HTTP/1 encoder's context: a stream's chunks are written below it, framed already.
    var encoder: ChannelHandlerContext?
    /// `write-timeout`, taken over from the pipeline's `WriteDeadline`.
    private var writeDeadline: UnwritableDeadline?

    /// Whether NIO's encoder frames the open-ended body as chunks: an HTTP/1.1 answer.
    var isChunked: Bool { version == .http1_1 }

    /// Serves `request`, which has fully arrived, as soon as the handler is in an active
    /// pipeline; closes the connection once unwritable for `writeTimeout`.
    package init(
        request: HTTPRequest,
        version: HTTPVersion,
        responder: Responder,
        writeTimeout: TimeAmount? = nil,
        logger: Logger
    ) {
        self.request = request
        self.writeDeadline = writeTimeout.map(UnwritableDeadline.init(timeout:))
        // The answer's version: 1.0 to a 1.0 client (its body ends with the connection), else 1.1.
        self.version = version == .http1_0 ? .http1_0 : .http1_1
        self.responder = responder
        self.logger = logger
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !context.channel.isWritable { writeDeadline?.writabilityChanged(of: context.channel) }
        if context.channel.isActive { route(context) }
    }

    package func channelActive(context: ChannelHandlerContext) {
        route(context)
        context.fireChannelActive()
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        stop()
        writeDeadline?.cancel()
        self.context = nil
        encoder = nil
    }

    package func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // A client that half-closes may still read; one that is gone is noticed at the next
        // write (a heartbeat at the latest), as on the async path.
        if event is ChannelShouldQuiesceEvent, follow == nil {
            // Shutting down before the stream started (the hub's drain ends a started one).
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        writeDeadline?.writabilityChanged(of: context.channel)
        if context.channel.isWritable { writable() }
        context.fireChannelWritabilityChanged()
    }

    /// Runs the request through the router with a takeover slot, then serves what it answered.
    private func route(_ context: ChannelHandlerContext) {
        guard !isRouted, let head = self.request else { return }
        isRouted = true
        self.request = nil
        let request = Request(head: head, body: RequestBody(buffer: ByteBuffer()))
        let version = self.version
        let channel = context.channel
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let responder = self.responder
        let logger = self.logger
        Task(executorPreference: LoopExecutor(context.eventLoop)) {
            [request, version, responder, channel, logger, handler] in
            await StreamConnection.serve(
                request,
                version: version,
                responder: responder,
                channel: channel,
                logger: logger,
                handler: handler
            )
        }
    }

    private static func serve(
        _ request: Request,
        version: HTTPVersion,
        responder: Responder,
        channel: any Channel,
        logger: Logger,
        handler: NIOLoopBound<StreamConnection>
    ) async {
        let (routed, takeover) = await LoopRouting.respond(
            to: request,
            serving: .stream,
            responder: responder,
            channel: channel,
            logger: logger
        )
        var response = routed
        let plan = takeover.plan
        response.headers[.date] = HTTPDate.now
        response.headers[.connection] = "close"
        if plan != nil { response.headers[.contentLength] = nil }  // open-ended
        var head = HTTPResponseHead(response.head)
        head.version = version
        if let plan {
            channel.eventLoop.execute { [head] in handler.value.start(plan, head: head) }
        } else {
            await write(head, response.body, to: channel)
        }
    }

    /// Writes an answer that is not a stream, then closes.
    private static func write(_ head: HTTPResponseHead, _ body: ResponseBody, to channel: any Channel) async {
        do {
            try await channel.writeAndFlush(HTTPServerResponsePart.head(head))
            try await body.write(ChannelBodyWriter(channel: channel))
        } catch {
            // The client went away: nothing to answer.
        }
        channel.close(promise: nil)
    }
}

/// Writes a response body straight to the channel, part by part.
private struct ChannelBodyWriter: ResponseBodyWriter {
    let channel: any Channel

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)))
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await channel.writeAndFlush(HTTPServerResponsePart.end(trailingHeaders.map { HTTPHeaders($0) }))
    }
}
