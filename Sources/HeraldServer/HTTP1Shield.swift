internal import HTTPTypes
internal import HeraldGRPC
internal import HeraldHTTP
internal import HeraldWebSocket
internal import HummingbirdCore
internal import Logging
internal import NIOCore
internal import NIOHTTP1
internal import NIOWebSocket

/// What an HTTP/1 connection may cost before its request reaches a route.
struct HTTP1ShieldLimits: Sendable {
    /// From a head's first byte to its last (`head-timeout`); also the window of the body rate.
    var headTimeout: TimeAmount
    /// Body bytes a request must deliver per `headTimeout` window (`min-body-rate` × window).
    var minBodyBytesPerWindow: Int
    /// The largest body a JSON route takes (`max-body-bytes`).
    var maxBodyBytes: Int
    /// The largest body a gRPC-Web call takes: a message of `max-body-bytes` framed and
    /// base64-encoded, as `GRPCWebTransport` reads it.
    var maxGRPCWebBodyBytes: Int { GRPCWebTransport.maxBodyBytes(forMessageBytes: maxBodyBytes) }
    /// The decoder's limit on one header field; a longer request line is a 414.
    var maxHeaderFieldSize: Int
}

/// The WebSocket-upgradable HTTP/1 channel (``WebSocketUpgradeChannel``), with an ``HTTP1Shield`` in front of it,
/// and a ``StreamGate`` that serves a first request for a stream on the event loop.
struct ShieldedHTTP1Channel: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        let inner: WebSocketUpgradeChannel.Value
        /// False when the shield refused the connection before its first request.
        let served: EventLoopFuture<Bool>
        var channel: any Channel { inner.channel }
    }

    let inner: WebSocketUpgradeChannel
    let limits: HTTP1ShieldLimits
    /// Serves streams and long polls on the event loop (``StreamGate``).
    let streams: LoopStreams

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            let served = channel.eventLoop.makePromise(of: Bool.self)
            let shield = HTTP1Shield(limits: limits, served: served)
            let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try operations.addHandler(shield.tap, position: .before(decoder))
            try operations.addHandler(
                StreamGate(streams: streams, shield: shield, idleTimeout: streams.idleTimeout, logger: logger),
                position: .after(decoder)
            )
            try operations.addHandler(shield, position: .last)
            return Value(inner: value, served: served.futureResult)
        }
    }

    func handle(value: Value, logger: Logger) async {
        // Hummingbird's handling starts only once a request goes on to it: a connection whose
        // requests the gate serves (polls, publishes, a stream) keeps no task waiting for one.
        // One refused (or gone) before its first request never reaches Hummingbird, whose
        // upgrade handler would log the abandoned upgrade as an error.
        value.served.whenSuccess { [inner] served in
            guard served else { return }
            Task { await inner.handle(value: value.inner, logger: logger) }
        }
    }
}

/// Answers what Hummingbird's pipeline leaves unanswered, and bounds how slowly a request
/// may arrive.
///
/// Hummingbird builds its HTTP/1 pipeline with NIO's error handling off, and arms its idle
/// timeout only once a first head has parsed: a request NIO cannot parse (`FOO / HTTP/1.1`,
/// a NUL in a header, 10,000 headers) got no answer and its connection stayed open, and a
/// head sent one byte every few seconds was held forever. The shield sits after the HTTP
/// decoder (and taps the bytes before it) until the connection upgrades to WebSocket:
///
/// - a parse error before a route has the request is answered here with its problem
///   document (400, 414, 431, 501 or 505) and `Connection: close`; one in a body reaches the
///   route, whose read fails, and `ProblemMiddleware` answers 400;
/// - a head must arrive within `headTimeout` of its first byte (408), and a body must keep
///   up `minBodyBytesPerWindow` per window (408, or a plain close once the answer has begun);
/// - a declared `Content-Length` over the limit is a 413 at once, and a transfer coding
///   other than `chunked` a 400.
///
/// An answer never interleaves with a response in flight: it waits for that response's end.
final class HTTP1Shield: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Phase {
        /// Between requests: no byte of the next head yet.
        case idle
        /// Bytes of a head have arrived; it has not parsed yet.
        case readingHead
        /// A head went to the route; its body is arriving.
        case body
        /// Something failed; whatever arrives now is dropped and the connection ends.
        case closing
    }

    /// Sits before the HTTP decoder and tells the shield that bytes arrived.
    let tap = ByteTap()
    private let limits: HTTP1ShieldLimits
    private var phase = Phase.idle
    private var headBytes = 0
    /// Bytes up to the first line feed of the head being read: the request line's length.
    private var requestLineBytes: Int?
    /// Heads forwarded whose response has not ended.
    private var inFlight = 0
    private var responseStarted = false
    /// An answer that waits for the response in flight to end.
    private var deferred: Problem?
    /// Close the connection when the response in flight ends.
    private var closeAfterResponse = false
    private var declaredLength: Int?
    private var bodyBytes = 0
    private var windowBytes = 0
    private var timer: Scheduled<Void>?
    /// When the head whose first bytes came in the read under way is due: its timer is set only
    /// if the read ends without it (``readEnded(context:)``). A head that comes in one read, as
    /// nearly every one does, sets and cancels no timer (a cancel searches all of the loop's
    /// timers: NIO removes a cancelled one by a linear search).
    private var headDue: NIODeadline?
    /// Its own context, for answers that follow a request ``StreamGate`` answered.
    private var context: ChannelHandlerContext?

    /// Whether a first request reached Hummingbird; settled once.
    private let served: EventLoopPromise<Bool>
    private var servedSettled = false

    init(limits: HTTP1ShieldLimits, served: EventLoopPromise<Bool>) {
        self.limits = limits
        self.served = served
    }

    private func settleServed(_ value: Bool) {
        guard !servedSettled else { return }
        servedSettled = true
        served.succeed(value)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        tap.onBytes = { bytes in
            let (shield, context) = loopBound.value
            shield.bytesArrived(bytes, context: context)
        }
        tap.onReadEnd = {
            let (shield, context) = loopBound.value
            shield.readEnded(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        tap.onBytes = nil
        tap.onReadEnd = nil
        cancelTimer()
        settleServed(false)
    }

    // MARK: inbound

    private func bytesArrived(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        switch phase {
        case .idle:
            phase = .readingHead
            headBytes = 0
            requestLineBytes = nil
            headDue = context.eventLoop.now + limits.headTimeout
            fallthrough
        case .readingHead:
            if requestLineBytes == nil, let lineFeed = bytes.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
                requestLineBytes = headBytes + (lineFeed - bytes.readerIndex)
            }
            headBytes += bytes.readableBytes
        case .body, .closing:
            break
        }
    }

    /// The read under way ended: a head still arriving gets its timer.
    private func readEnded(context: ChannelHandlerContext) {
        guard let due = headDue else { return }
        headDue = nil
        if phase == .readingHead { arm(context, at: due) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard phase != .closing else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            cancelTimer()
            declaredLength = head.headers.first(name: "content-length").flatMap { Int($0) }
            if let refusal = refusal(of: head) { return answer(refusal, context: context) }
            phase = .body
            bodyBytes = 0
            windowBytes = 0
            inFlight += 1
            responseStarted = false
            settleServed(true)
            arm(context, limits.headTimeout)
        case .body where phase != .body, .end where phase != .body:
            // The upgrade handler kept the head of an upgrade it refused and passes on the rest;
            // Hummingbird answers it.
            cancelTimer()
            phase = .body
            inFlight += 1
            settleServed(true)
            return channelRead(context: context, data: data)
        case .body(let chunk):
            bodyBytes += chunk.readableBytes
            windowBytes += chunk.readableBytes
        case .end:
            cancelTimer()
            phase = .idle
        }
        context.fireChannelRead(data)
    }

    /// What the head alone already refuses (``StreamGate`` leaves such a request to the shield).
    func refusal(of head: HTTPRequestHead) -> Problem? {
        let declaredLength = head.headers.first(name: "content-length").flatMap { Int($0) }
        let codings = head.headers[canonicalForm: "transfer-encoding"]
        if !codings.isEmpty, codings.count != 1 || codings[0].lowercased() != "chunked" {
            return Self.problem(.badRequest, "malformed-request", "only Transfer-Encoding: chunked is accepted")
        }
        // Every request the gate serves asks this: the content type is read only for a length.
        guard let declaredLength else { return nil }
        let isGRPCWeb =
            head.headers.first(name: "content-type")?.lowercased().hasPrefix("application/grpc-web") ?? false
        let limit = isGRPCWeb ? limits.maxGRPCWebBodyBytes : limits.maxBodyBytes
        if declaredLength > limit {
            return Self.problem(.contentTooLarge, "too-large", "the body is larger than \(limit) bytes")
        }
        return nil
    }

    /// ``StreamGate`` took a request (its head, body and end, all arrived) that never reaches the
    /// shield, and answers it itself: the head arrived in time.
    /// It counts as a request in flight until ``requestAnswered()``: a pipelined head's clock
    /// and a problem found meanwhile wait for its answer, as for a response the shield sees.
    func requestTaken() {
        cancelTimer()
        if phase == .readingHead { phase = .idle }
        inFlight += 1
    }

    /// The answer to a request ``StreamGate`` took was written.
    func requestAnswered() {
        guard inFlight > 0, let context else { return }
        inFlight -= 1
        guard inFlight == 0 else { return }
        if let deferred {
            self.deferred = nil
            return answer(deferred, context: context)
        }
        if phase == .readingHead { arm(context, limits.headTimeout) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parseError = error as? HTTPParserError else {
            // After a failure the decoder refuses whatever follows; that is expected.
            if phase == .closing { return }
            return context.fireErrorCaught(error)
        }
        switch phase {
        case .closing:
            return
        case .body where inFlight > 0 && !responseStarted:
            // The route is reading this body: its read fails and ProblemMiddleware answers 400.
            phase = .closing
            closeAfterResponse = true
            cancelTimer()
            context.fireErrorCaught(error)
        case .body:
            context.close(promise: nil)
        case .idle, .readingHead:
            answer(
                Self.problem(for: parseError, requestLineBytes: requestLineBytes ?? headBytes, limits: limits),
                context: context
            )
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .upgradeComplete = event as? HTTPServerUpgradeEvents {
            // A WebSocket now: its frames are not HTTP, and its connection has its own bounds.
            // The event goes on once the shield is out (a removed context forwards nothing), so
            // the connection, which starts on it, never writes a frame through the shield.
            settleServed(true)
            let operations = context.pipeline.syncOperations
            let encoder = try? operations.context(handlerType: WebSocketFrameEncoder.self)
            operations.removeHandler(tap, promise: nil)
            operations.removeHandler(context: context, promise: nil)
            encoder?.fireUserInboundEventTriggered(event)
            return
        } else if event is ChannelShouldQuiesceEvent, inFlight == 0, phase != .idle {
            // Shutting down mid-request: before a first head nothing else would close it.
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200:
            responseStarted = true
        case .end:
            inFlight -= 1
            responseStarted = false
            if inFlight == 0, let deferred {
                context.write(data, promise: promise)
                self.deferred = nil
                return answer(deferred, context: context)
            }
            if inFlight == 0, closeAfterResponse {
                let channel = context.channel
                let written = context.eventLoop.makePromise(of: Void.self)
                written.futureResult.whenComplete { _ in channel.close(promise: nil) }
                promise.map { written.futureResult.cascade(to: $0) }
                return context.write(data, promise: written)
            }
            // A pipelined head waited for this answer; its clock starts now.
            if phase == .readingHead { arm(context, limits.headTimeout) }
        default:
            break
        }
        context.write(data, promise: promise)
    }

    // MARK: answers and deadlines

    /// Writes `problem` with `Connection: close` and ends the connection, after the response
    /// in flight if there is one.
    private func answer(_ problem: Problem, context: ChannelHandlerContext) {
        cancelTimer()
        phase = .closing
        if inFlight > 0 {
            deferred = problem
            return
        }
        let body = context.channel.allocator.buffer(string: problem.json)
        let headers = HTTPHeaders([
            ("content-type", "application/problem+json"),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("content-length", "\(body.readableBytes)"),
            ("connection", "close"),
        ])
        let status = HTTPResponseStatus(statusCode: Int(problem.status.code), reasonPhrase: problem.status.reasonPhrase)
        context.write(wrapOutboundOut(.head(.init(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            let (shield, context) = loopBound.value
            shield.linger(context: context)
        }
    }

    /// Closes the connection's output and discards what the client still sends for a moment
    /// before closing it: closing with unread bytes would make the kernel reset the connection,
    /// and a reset can destroy the answer before the client reads it.
    private func linger(context: ChannelHandlerContext) {
        context.close(mode: .output, promise: nil)
        let channel = context.channel
        context.eventLoop.scheduleTask(in: Self.lingerTime) { channel.close(promise: nil) }
    }

    /// How long a refused connection may keep sending before it is closed.
    static let lingerTime = TimeAmount.seconds(2)

    private func arm(_ context: ChannelHandlerContext, _ delay: TimeAmount) {
        arm(context, at: context.eventLoop.now + delay)
    }

    private func arm(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer?.cancel()
        headDue = nil
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (shield, context) = loopBound.value
            shield.deadlinePassed(context: context)
        }
    }

    private func cancelTimer() {
        timer?.cancel()
        timer = nil
        headDue = nil
    }

    private func deadlinePassed(context: ChannelHandlerContext) {
        timer = nil
        switch phase {
        case .readingHead where inFlight > 0:
            // A pipelined head: Hummingbird reads it once the answer in flight ends.
            arm(context, limits.headTimeout)
        case .readingHead:
            answer(
                Self.problem(.requestTimeout, "request-timeout", "the request head was not sent in time"),
                context: context
            )
        case .body:
            let remaining = declaredLength.map { max($0 - bodyBytes, 1) } ?? Int.max
            if windowBytes >= min(limits.minBodyBytesPerWindow, remaining) {
                windowBytes = 0
                arm(context, limits.headTimeout)
            } else if inFlight > 0, !responseStarted {
                phase = .closing
                closeAfterResponse = true
                var problem = Self.problem(.requestTimeout, "request-timeout", "the request body arrived too slowly")
                problem.headers[.connection] = "close"
                context.fireErrorCaught(problem)
            } else {
                // The answer has begun, or was given without reading the body: nothing to say.
                phase = .closing
                context.close(promise: nil)
            }
        case .idle, .closing:
            break
        }
    }

    static func problem(_ status: HTTPResponse.Status, _ code: String, _ detail: String) -> Problem {
        Problem(status: status, code: code, detail: detail)
    }

    /// The answer to a head NIO could not parse.
    static func problem(for error: HTTPParserError, requestLineBytes: Int, limits: HTTP1ShieldLimits) -> Problem {
        switch error {
        case .invalidMethod:
            problem(.notImplemented, "not-implemented", "the request method is not one Herald serves")
        case .headerOverflow where requestLineBytes > limits.maxHeaderFieldSize:
            problem(.uriTooLong, "uri-too-long", "the request target is longer than \(limits.maxHeaderFieldSize) bytes")
        case .headerOverflow:
            problem(
                .requestHeaderFieldsTooLarge,
                "headers-too-large",
                "the request's headers are too large or too many"
            )
        case .invalidVersion:
            problem(
                .httpVersionNotSupported,
                "version-not-supported",
                "only HTTP/1.0 and HTTP/1.1 are served on this path"
            )
        default:
            problem(.badRequest, "malformed-request", "the request is not valid HTTP/1.1 (\(error))")
        }
    }
}

/// Hands the bytes that reach the HTTP decoder to ``HTTP1Shield``, unchanged.
final class ByteTap: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    var onBytes: ((ByteBuffer) -> Void)?
    /// Called once a read's bytes went through the decoder.
    var onReadEnd: (() -> Void)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        onBytes?(unwrapInboundIn(data))
        context.fireChannelRead(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.fireChannelReadComplete()
        onReadEnd?()
    }
}
