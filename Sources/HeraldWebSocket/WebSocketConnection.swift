internal import CompressNIO
internal import HeraldAccess
internal import HeraldCore
internal import HeraldHub
internal import Logging
internal import NIOCore
internal import NIOHTTP1
internal import NIOWebSocket

/// One `/api/v1/ws` connection, served on its event loop after the upgrade: no task, no
/// `NIOAsyncChannel`, no timer of its own while it is idle.
///
/// It reads frames from NIO's decoder and does what a WebSocket library would: refuses a frame
/// without a mask (1002; RFC 6455 section 5.1) and answers the decoder's errors (1009 for a frame
/// over the limit, 1002 otherwise), reassembles fragmented messages up to `maxMessageBytes` (1009 beyond),
/// inflates permessage-deflate messages with its loop's shared inflater, refuses invalid UTF-8
/// (1007) and stray reserved bits or continuations (1002), answers pings and closes. Its own
/// frames are built as bytes (an event's once, for every connection) and written below the
/// frame encoder, several per flush. Ops are answered in the order they arrive
/// (`WebSocketConnection+Ops.swift`); while one waits for I/O (an `auth`, a `publish`, a
/// `create_check`), the next messages wait and the socket is not read.
///
/// Liveness: its loop pings every connection each `heartbeat` (``WebSocketLoops``); one that
/// sent no frame since the previous ping is closed (1001). A close the server starts (slow
/// consumer 1008, shutdown 1012, a protocol error) is written after the frames already queued;
/// once it is sent, the connection waits up to ``closeTimeout`` for the client's close.
final class WebSocketConnection: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    /// Why the server closes, which decides the close code.
    enum Closing {
        case slowConsumer(channel: ChannelName, offset: Offset)
        case messageTooLarge
        case restart
        case protocolError
        case invalidUTF8
        /// A compressed message that does not inflate.
        case invalidData
        case pingTimeout
    }

    /// How long a close the server started waits for the client's.
    static let closeTimeout = TimeAmount.seconds(5)

    let endpoint: WebSocketEndpoint
    /// The upgrade request's credential, taken as the connection starts.
    private var bearer: String?
    /// The client's address, for rate limits.
    let address: String?
    /// Whether permessage-deflate was negotiated.
    let deflates: Bool

    var context: ChannelHandlerContext?
    /// Whether the upgrade completed and the connection started (see `start`).
    private(set) var isStarted = false
    /// Where the connection's frames enter the pipeline: below NIO's frame encoder.
    private var wire: ChannelHandlerContext?
    /// The loop's shared state (deflate codec), once registered.
    var loop: WebSocketLoops.Local?

    // Reading
    /// The message being reassembled from its fragments.
    private var message: ByteBuffer?
    private var messageIsText = false
    private var messageIsCompressed = false
    /// A frame arrived since the last ping.
    private var heard = true
    /// The payload of the latest ping not answered yet.
    private var pendingPong: ByteBuffer?

    // Ops (see WebSocketConnection+Ops.swift)
    var subscriptions = Subscriptions()
    var principal = Principal.anonymous
    var expiryTimer: Scheduled<Void>?
    /// Text messages read and not answered yet, in order.
    var waiting: [String] = []
    /// An op waits for I/O: later messages wait in `waiting`, and reads are held back.
    var isBusy = false
    private var readPending = false

    // Writing
    /// Frames and bytes written while the connection was unwritable: the slow-consumer bound.
    private var unwritableFrames = 0
    private var unwritableBytes = 0
    /// The server's close frame is written: nothing more goes out.
    private(set) var isClosing = false
    private var closeTimer: Scheduled<Void>?
    /// `write-timeout`, when taken over from the pipeline's `WriteDeadline`.
    private var writeDeadline: UnwritableDeadline?

    init(endpoint: WebSocketEndpoint, bearer: String?, address: String?, deflates: Bool, writeTimeout: TimeAmount?) {
        self.endpoint = endpoint
        self.writeDeadline = writeTimeout.map(UnwritableDeadline.init(timeout:))
        self.bearer = bearer
        self.address = address
        self.deflates = deflates
    }

    var logger: Logger { endpoint.logger }
    var configuration: WebSocketConfiguration { endpoint.configuration }

    // MARK: lifecycle

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        isWritable = context.channel.isWritable
        if !isWritable { writeDeadline?.writabilityChanged(of: context.channel) }
        wire = try? context.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
    }

    /// Registers with the loop and takes the upgrade's credential, once the upgrade is complete:
    /// before that, the HTTP handlers before the frame encoder (the shield) are still in the
    /// pipeline, and a frame written through them would not be HTTP.
    private func start() {
        guard !isStarted, context != nil else { return }
        isStarted = true
        guard let context, let loop = endpoint.loops.add(self, on: context.eventLoop) else {
            return finish(.restart)
        }
        self.loop = loop
        if let bearer {
            self.bearer = nil
            authenticateUpgrade(bearer)
        }
        answerWaiting()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        end()
        self.context = nil
        wire = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        end()
        context.fireChannelInactive()
    }

    /// The connection is gone: every subscription and timer stops.
    private func end() {
        closeTimer?.cancel()
        closeTimer = nil
        writeDeadline?.cancel()
        stopEverything()
        if let context, loop != nil {
            endpoint.loops.remove(self, on: context.eventLoop)
            loop = nil
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .upgradeComplete = event as? HTTPServerUpgradeEvents {
            start()
        } else if event is ChannelShouldQuiesceEvent {
            finish(.restart)
        } else if case .inputClosed = event as? ChannelEvent {
            context.close(promise: nil)  // the client is gone without a close frame
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        writeDeadline?.writabilityChanged(of: context.channel)
        isWritable = context.channel.isWritable
        if isWritable {
            unwritableFrames = 0
            unwritableBytes = 0
            sendPong()
            for subscription in subscriptions.values { subscription.follower.writable() }
        }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // NIO's decoder found a frame it cannot read: the close says why (NIO's own error
        // handler, which would say the same, is left out of the pipeline). Anything else ends
        // the connection.
        // The decoder reads nothing more after its error, so no client close can come.
        guard let error = error as? NIOWebSocketError else { return context.close(promise: nil) }
        finish(error == .invalidFrameLength ? .messageTooLarge : .protocolError, awaitingClose: false)
    }

    /// Reads are held back while an op waits for I/O, so a client cannot queue ops without bound.
    func read(context: ChannelHandlerContext) {
        if isBusy || !waiting.isEmpty {
            readPending = true
        } else {
            context.read()
        }
    }

    /// The op that waited is answered: the next ones run, and reading resumes.
    func resumeReading() {
        guard !isBusy, waiting.isEmpty, readPending, let context else { return }
        readPending = false
        context.read()
    }

    // MARK: reading frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        heard = true
        if isClosing {
            // Waiting for the client's close: anything else is dropped.
            if frame.opcode == .connectionClose { context.close(promise: nil) }
            return
        }
        guard frame.maskKey != nil, !frame.rsv2, !frame.rsv3 else { return finish(.protocolError) }
        switch frame.opcode {
        case .ping:
            guard !frame.rsv1 else { return finish(.protocolError) }
            // A client that does not read gets one pong, for its latest ping, once it reads
            // again (RFC 6455 section 5.5.3): pings never queue pongs without bound.
            pendingPong = frame.unmaskedData
            if isWritable { sendPong() }
        case .pong:
            guard !frame.rsv1 else { return finish(.protocolError) }
        case .connectionClose:
            guard !frame.rsv1 else { return finish(.protocolError) }
            closeAnswered(frame, context)
        case .text, .binary:
            guard message == nil, !frame.rsv1 || deflates else { return finish(.protocolError) }
            message = context.channel.allocator.buffer(capacity: frame.length)
            messageIsText = frame.opcode == .text
            messageIsCompressed = frame.rsv1
            append(frame)
        case .continuation:
            guard message != nil, !frame.rsv1 else { return finish(.protocolError) }
            append(frame)
        default:
            finish(.protocolError)
        }
    }

    /// Adds a data frame to the message; at its last frame, the message is handled.
    private func append(_ frame: WebSocketFrame) {
        guard var message else { return }
        self.message = nil
        guard message.readableBytes + frame.length <= configuration.maxMessageBytes else {
            return finish(.messageTooLarge)
        }
        var data = frame.unmaskedData
        message.writeBuffer(&data)
        guard frame.fin else {
            self.message = message
            return
        }
        if messageIsCompressed {
            do {
                guard let loop else { return }
                message = try loop.deflate.inflate(message, maxSize: configuration.maxMessageBytes)
            } catch let error as CompressNIOError where error == .bufferOverflow {
                return finish(.messageTooLarge)
            } catch {
                return finish(.invalidData)  // not deflate at all
            }
            guard message.readableBytes <= configuration.maxMessageBytes else { return finish(.messageTooLarge) }
        }
        guard messageIsText else {
            return send(ServerFrame.error(OpError("malformed", "only text frames are understood"), id: nil))
        }
        guard let text = String(validating: message.readableBytesView, as: UTF8.self) else {
            return finish(.invalidUTF8)
        }
        received(text)
    }

    /// The client's close: answered with its code (a close the server started is complete),
    /// then the connection ends.
    private func closeAnswered(_ frame: WebSocketFrame, _ context: ChannelHandlerContext) {
        var data = frame.unmaskedData
        let code = data.readInteger(as: UInt16.self)
        // RFC 6455 sections 5.5.1 and 7.4: a code, if any, that may be sent, and a UTF-8 reason.
        guard data.readableBytes == 0 || code != nil, code.map(Self.isSendable) ?? true else {
            return finish(.protocolError)
        }
        guard String(validating: data.readableBytesView, as: UTF8.self) != nil else { return finish(.invalidUTF8) }
        isClosing = true
        stopEverything()
        var payload = context.channel.allocator.buffer(capacity: 2)
        if let code { payload.writeInteger(code) }
        let channel = context.channel
        wire?.writeAndFlush(NIOAny(WebSocketWire.frame(.close, payload))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// Whether a close frame may carry `code`: 1000-1003, 1007-1014 and 3000-4999.
    private static func isSendable(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: true
        default: false
        }
    }

    // MARK: liveness

    private func sendPong() {
        guard let payload = pendingPong, let context else { return }
        pendingPong = nil
        write(WebSocketWire.frame(.pong, payload))
        context.flush()
    }

    /// The loop's ping sweep: a connection silent since the last ping is closed.
    func ping() {
        guard !isClosing, context != nil else { return }
        guard heard else { return finish(.pingTimeout) }
        heard = false
        write(WebSocketWire.frame(.ping, ByteBuffer()))
        context?.flush()
    }

    // MARK: writing

    /// The channel's writability, as NIO last announced it (reading it from the channel on every
    /// delivery showed in profiles: a pipeline lookup and an atomic load per subscriber and event).
    private(set) var isWritable = true

    /// Writes a whole frame below the encoder, counted against the slow-consumer bound while
    /// the connection is unwritable. Call `flush` after.
    func write(_ frame: ByteBuffer) {
        guard !isClosing, let wire else { return }
        if !isWritable {
            unwritableFrames += 1
            unwritableBytes += frame.readableBytes
        }
        wire.write(NIOAny(frame), promise: nil)
    }

    /// Whether what was written while unwritable passed `ws-max-queued-frames` or `-bytes`.
    var isOverBound: Bool {
        unwritableFrames >= configuration.maxQueuedFrames || unwritableBytes >= configuration.maxQueuedBytes
    }

    /// An op as a text frame, compressed when deflate was negotiated and it is large enough.
    func opFrame(_ text: String) -> ByteBuffer {
        let payload = ByteBuffer(string: text)
        guard deflates, payload.readableBytes >= SharedDeflate.minimumSize, let loop,
            let compressed = try? loop.deflate.deflate(payload)
        else { return WebSocketWire.frame(.text, payload) }
        return WebSocketWire.frame(.text, compressed, compressed: true)
    }

    /// Sends one op's answer and flushes.
    func send(_ text: String) {
        guard !isClosing, let context else { return }
        write(opFrame(text))
        context.flush()
        if !isWritable, isOverBound {
            finish(.slowConsumer(channel: ChannelName("connection")!, offset: 0))
        }
    }

    /// An event's frame: shared by every connection (and, compressed, by every deflate
    /// connection of the loop).
    func frame(of event: EncodedEvent) -> ByteBuffer {
        guard deflates, event.webSocketFrame.readableBytes >= SharedDeflate.minimumSize, let loop,
            let frame = try? loop.deflate.frame(of: event)
        else { return event.webSocketFrame }
        return frame
    }

    /// Closes for `reason`: the frames already written go first, then the close frame; the
    /// connection ends at the client's close, or after ``closeTimeout`` (at once, unless
    /// `awaitingClose`).
    func finish(_ reason: Closing, awaitingClose: Bool = true) {
        guard !isClosing, let context else { return }
        let (code, text): (UInt16, String)
        switch reason {
        case .slowConsumer(let channel, let offset):
            let error = OpError("slow_consumer", "the connection fell behind; resume from your last offset")
            write(opFrame(ServerFrame.error(error, channel: channel, offset: offset, id: nil)))
            (code, text) = (1008, "slow consumer")
        case .messageTooLarge: (code, text) = (1009, "message too large")
        case .restart: (code, text) = (1012, "service restart")
        case .protocolError: (code, text) = (1002, "protocol error")
        case .invalidUTF8: (code, text) = (1007, "invalid UTF-8")
        case .invalidData: (code, text) = (1007, "invalid compressed data")
        case .pingTimeout: (code, text) = (1001, "ping timeout")
        }
        var payload = context.channel.allocator.buffer(capacity: 2 + text.utf8.count)
        payload.writeInteger(code)
        payload.writeString(text)
        isClosing = true
        stopEverything()
        // The wait for the client's close starts once the close frame is sent: a client that
        // reads slowly still gets everything before it (the write deadline bounds that).
        let connection = NIOLoopBound(self, eventLoop: context.eventLoop)
        let channel = context.channel
        guard let wire else { return context.close(promise: nil) }
        wire.writeAndFlush(NIOAny(WebSocketWire.frame(.close, payload))).whenComplete { result in
            guard case .success = result, channel.isActive, awaitingClose else { return channel.close(promise: nil) }
            connection.value.closeTimer = channel.eventLoop.scheduleTask(in: Self.closeTimeout) {
                channel.close(promise: nil)
            }
        }
    }
}
