internal import HTTPTypes
internal import HeraldHTTP
internal import Hummingbird
internal import HummingbirdCore
internal import Logging
internal import NIOCore
internal import NIOHTTP1
internal import NIOHTTPTypesHTTP1

/// What serves streams and requests on the event loop: Herald's router, and how long a
/// connection may stay idle between requests.
struct LoopStreams: Sendable {
    let responder: StreamHeadResponder<RouterResponder<HeraldRequestContext>>
    let idleTimeout: TimeAmount
}

/// Looks at a connection's requests before Hummingbird's upgrade handler sees one, and serves
/// on the event loop what needs no task:
///
/// - a stream (``StreamTakeover/Candidate/stream``) is handed to a ``StreamConnection``,
///   which owns the connection from then on;
/// - any other request of the API (``StreamTakeover/Candidate/request``: a long poll, a
///   publish, a check's creation) on a keep-alive HTTP/1.1 connection, once its body (if any)
///   has arrived with its head, is routed and answered by a ``LoopRequest``, and the gate then
///   waits for the next request;
/// - anything else passes on, with whatever the client pipelined after it, and the gate steps
///   aside for good: Hummingbird serves the connection from there, its first request being the
///   one passed on. So does a request whose body is still arriving when its head's bytes have
///   been read: the shield's bounds on slow bodies apply to it there.
///
/// So a connection that streams, polls or publishes never gets a `NIOAsyncChannel`, and its
/// requests are routed in a task on its own event loop (no thread hop but the store's).
///
/// On a stream's takeover the request has fully arrived, so everything that reads requests
/// leaves the pipeline (the HTTP decoder, the upgrade handler, the ``HTTP1Shield``, which
/// guards requests on their way to a route, and the gate), and the stream handler is all that
/// follows NIO's HTTP/1 encoder: an idle stream costs its socket, the encoder and that handler.
/// No Hummingbird connection state handler either: the connection closes once its answer is
/// written (its idle timer would close a client that reads slowly before the end).
///
/// Between requests the gate closes a connection idle for `idleTimeout`, as Hummingbird's
/// state handler would; while a request is answered (a poll held) a pipelined request waits
/// its turn (see ``read(context:)``), and the shield, which the request never reaches, is
/// told it was taken.
final class StreamGate: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let streams: LoopStreams
    private let shield: HTTP1Shield
    private let idleTimeout: TimeAmount
    private let logger: Logger
    /// What the request being gathered (head to end) is taken for.
    private var taking: StreamTakeover.Candidate?
    private var held: [HTTPServerRequestPart] = []
    /// The request being answered.
    private var exchange: LoopRequest<StreamHeadResponder<RouterResponder<HeraldRequestContext>>>?
    /// What a pipelining client sent while a request was answered: handled once it is.
    private var pipelined: [HTTPServerRequestPart] = []
    /// A read was asked for while a request was answered.
    private var readPending = false
    /// A request went on to Hummingbird: the gate leaves once it has passed on the rest.
    private var isPassing = false
    /// Requests started, so that a late word from one already stopped is ignored.
    private var exchanges = 0
    /// The client half-closed while a request was answered: it still gets its answer, then the
    /// connection closes (nothing else would read the end; Hummingbird's upgrade handler,
    /// which has seen no request, would close before the answer).
    private var isInputClosed = false
    /// A stream took the connection over.
    private var isGone = false
    private var isQuiescing = false
    private var idleTimer: Scheduled<Void>?
    /// When the connection last fell idle between requests; `nil` while one is taken.
    private var idleSince: NIODeadline?

    init(streams: LoopStreams, shield: HTTP1Shield, idleTimeout: TimeAmount, logger: Logger) {
        self.streams = streams
        self.shield = shield
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if exchange != nil {
            pipelined.append(part)
        } else {
            handle(part, context)
            if isPassing { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
        }
    }

    /// A request whose body did not come with its head's bytes goes on to Hummingbird.
    func channelReadComplete(context: ChannelHandlerContext) {
        let passes = exchange == nil && taking == .request && !held.isEmpty
        if passes { passOnHeld(context) }
        context.fireChannelReadComplete()
        if passes { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    /// Hands the request being gathered to Hummingbird, as far as it came.
    private func passOnHeld(_ context: ChannelHandlerContext) {
        let parts = held
        held = []
        taking = nil
        cancelIdleTimer()
        isPassing = true
        for part in parts { context.fireChannelRead(wrapInboundOut(part)) }
    }

    private func handle(_ part: HTTPServerRequestPart, _ context: ChannelHandlerContext) {
        if isPassing { return context.fireChannelRead(wrapInboundOut(part)) }
        if taking == nil {
            guard case .head(let head) = part else { return passOn(part, context) }
            guard let candidate = Self.candidate(head), shield.refusal(of: head) == nil else {
                return passOn(part, context)
            }
            taking = candidate
            idleSince = nil
        }
        held.append(part)
        guard case .end = part else { return }
        switch taking {
        case .stream: takeOver(context)
        case .request: startRequest(context)
        case nil: break
        }
    }

    /// Hands `part`, and what follows it, to Hummingbird.
    private func passOn(_ part: HTTPServerRequestPart, _ context: ChannelHandlerContext) {
        cancelIdleTimer()
        isPassing = true
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// What the gate may serve of a request, from its head: a request other than a stream only
    /// on a connection that stays open after it (HTTP/1.1 without `Connection: close`), and
    /// with a body of a declared length (not `chunked`, not after `Expect: 100-continue`).
    static func candidate(_ head: HTTPRequestHead) -> StreamTakeover.Candidate? {
        guard head.headers["upgrade"].isEmpty else { return nil }
        let length = head.headers.first(name: "content-length").flatMap { Int($0) } ?? 0
        // Every Accept field, joined as the router reads them.
        let accept = head.headers["accept"]
        let candidate = StreamTakeover.candidate(
            method: head.method.rawValue,
            uri: head.uri,
            accept: accept.isEmpty ? nil : accept.joined(separator: ", "),
            hasBody: length > 0 || head.headers.contains(name: "transfer-encoding")
        )
        guard candidate == .request else { return candidate }
        guard head.version == .http1_1, head.isKeepAlive, head.headers["expect"].isEmpty,
            !head.headers.contains(name: "transfer-encoding")
        else { return nil }
        return candidate
    }

    // MARK: requests

    private func startRequest(_ context: ChannelHandlerContext) {
        guard case .head(let head)? = held.first else { return }
        var body = ByteBuffer()
        for case .body(var chunk) in held.dropFirst() { body.writeBuffer(&chunk) }
        held = []
        taking = nil
        shield.requestTaken()
        do {
            let request = try HTTPRequest(head, secure: false, splitCookie: false)
            exchanges += 1
            let number = exchanges
            exchange = LoopRequest(
                request: request,
                body: body,
                responder: streams.responder,
                context: context,
                logger: logger,
                isLast: { [weak self] in self?.answersLast ?? true },
                ended: { [weak self] keepAlive in self?.requestEnded(number, keepAlive: keepAlive, context) }
            )
        } catch {
            logger.error("cannot serve a request on its event loop", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    /// Request `number` was answered: the next request, if the connection stays.
    private func requestEnded(_ number: Int, keepAlive: Bool, _ context: ChannelHandlerContext) {
        guard number == exchanges, exchange != nil else { return }  // stopped before it answered
        exchange = nil
        // The shield hears of the answer after the pipelined requests have started: one taken
        // from them keeps it in flight, so a problem the shield found meanwhile (a malformed
        // head behind them) waits for that request's answer instead of going before it.
        defer { shield.requestAnswered() }
        guard keepAlive else { return }
        armIdleTimer(context)
        var parts = pipelined[...]
        pipelined = []
        while !isGone, let part = parts.popFirst() {
            if exchange != nil { pipelined.append(part) } else { handle(part, context) }
        }
        if isGone {
            // A pipelined stream took the connection over: the read held back goes to it.
            if readPending { context.channel.read() }
            return
        }
        // A pipelined request whose body had not all come goes on too.
        if exchange == nil, taking == .request, !held.isEmpty { passOnHeld(context) }
        // The read held back while the request was answered, unless another one holds it
        // again; then, once a request went on, the gate leaves (Hummingbird reads from here).
        if readPending, exchange == nil {
            readPending = false
            context.read()
        }
        if isPassing {
            // What went on outside a read reaches Hummingbird's channel only with a read's end.
            context.fireChannelReadComplete()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    /// Whether the request being answered is the connection's last: shutdown began, or the
    /// client half-closed, while it was answered. Its answer then says `Connection: close`,
    /// and the connection closes once the answer is written.
    private var answersLast: Bool { isQuiescing || isInputClosed }

    /// While a request is answered the gate reads on until something of a next request came
    /// (a poll then costs no change of the socket's interest in reading, two `epoll_ctl` calls),
    /// then holds the read back: what is pipelined waits its turn, at most two reads' worth.
    func read(context: ChannelHandlerContext) {
        if exchange != nil, !pipelined.isEmpty { readPending = true } else { context.read() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if exchange != nil, case .inputClosed? = event as? ChannelEvent {
            isInputClosed = true
            return
        }
        if event is ChannelShouldQuiesceEvent {
            isQuiescing = true
            // Between requests nothing else closes it; a held poll is answered by the hub's drain.
            if exchanges > 0, exchange == nil, taking == nil, !isPassing { context.close(promise: nil) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        stopRequest()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stopRequest()
    }

    private func stopRequest() {
        exchange?.stop()
        exchange = nil
        cancelIdleTimer()
    }

    /// The connection is idle from now: it closes once idle for `idleTimeout`. A timer already
    /// set stays, and looks again when it fires: a poll's answer and its next request do not
    /// each add and cancel a timer (a cancel searches the loop's timers).
    private func armIdleTimer(_ context: ChannelHandlerContext) {
        let now = context.eventLoop.now
        idleSince = now
        if idleTimer == nil { scheduleIdleCheck(at: now + idleTimeout, context) }
    }

    private func scheduleIdleCheck(at deadline: NIODeadline, _ context: ChannelHandlerContext) {
        idleTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            idleTimer = nil
            guard let idleSince else { return }  // a request is taken: its end sets the timer again
            let due = idleSince + idleTimeout
            if due <= context.eventLoop.now { context.close(promise: nil) } else { scheduleIdleCheck(at: due, context) }
        }
    }

    private func cancelIdleTimer() {
        idleTimer?.cancel()
        idleTimer = nil
        idleSince = nil
    }

    // MARK: streams

    private func takeOver(_ context: ChannelHandlerContext) {
        let operations = context.pipeline.syncOperations
        guard case .head(let head)? = held.first else { return }
        held = []
        pipelined = []  // a stream is the connection's last request
        isGone = true
        do {
            let request = try HTTPRequest(head, secure: false, splitCookie: false)
            typealias Upgrade = NIOTypedHTTPServerUpgradeHandler<WebSocketUpgradeChannel.UpgradeResult>
            for handler in [
                try operations.handler(type: Upgrade.self) as any RemovableChannelHandler,
                try operations.handler(type: ByteTap.self),
                try operations.handler(type: HTTP1Shield.self),
                try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self),
            ] {
                operations.removeHandler(handler, promise: nil)
            }
            let stream = StreamConnection(
                request: request,
                version: head.version,
                responder: streams.responder,
                writeTimeout: WriteDeadline.handOver(operations),
                logger: logger
            )
            try operations.addHandler(stream, position: .after(self))
        } catch {
            logger.error("cannot serve a stream on its event loop", metadata: ["error": "\(error)"])
            return context.close(promise: nil)
        }
        operations.removeHandler(context: context, promise: nil)
    }
}
