internal import HeraldCore
internal import HeraldHTTP
internal import HeraldRunner
internal import HeraldStore
internal import Logging
internal import NIOCore
internal import Synchronization

/// One WebSocket connection's state: its subscriptions and its bounded outgoing queue.
///
/// Every frame goes through one bounded queue to one writer task, so a slow client never
/// blocks a publisher: when the queue is full the connection is cut with `slow_consumer`.
/// Each subscription runs ``ChannelFollower`` in its own task, cancelled by `unsubscribe`
/// or when the connection ends.
final class WebSocketSession: Sendable {
    /// Why the writer stops, which decides the close code.
    enum Closing: Sendable {
        case clientClosed
        case slowConsumer(channel: ChannelName, offset: Offset)
        case messageTooLarge
        case restart
    }

    private struct State {
        var subscriptions: [ChannelName: Task<Void, Never>] = [:]
        var closing: Closing?
    }

    private let state = Mutex(State())
    private let sink: AsyncStream<ByteBuffer>.Continuation
    private let follower: ChannelFollower
    private let checks: CheckService
    private let configuration: WebSocketConfiguration
    private let logger: Logger

    init(
        sink: AsyncStream<ByteBuffer>.Continuation,
        follower: ChannelFollower,
        checks: CheckService,
        configuration: WebSocketConfiguration,
        logger: Logger
    ) {
        self.sink = sink
        self.follower = follower
        self.checks = checks
        self.configuration = configuration
        self.logger = logger
    }

    /// Why the connection is closing, once it is.
    var closing: Closing? { state.withLock { $0.closing } }

    /// Queues a frame; `false` when the connection is closing or the queue was full (and the
    /// connection is now closing for it).
    @discardableResult
    func send(_ frame: String, channel: ChannelName? = nil, offset: Offset = 0) -> Bool {
        send(ByteBuffer(string: frame), channel: channel, offset: offset)
    }

    /// Queues a frame's payload as it is: an event's bytes are shared by every connection.
    @discardableResult
    func send(_ frame: ByteBuffer, channel: ChannelName? = nil, offset: Offset = 0) -> Bool {
        guard closing == nil else { return false }
        switch sink.yield(frame) {
        case .enqueued:
            return true
        case .dropped:
            finish(.slowConsumer(channel: channel ?? ChannelName("connection")!, offset: offset))
            return false
        case .terminated:
            return false
        @unknown default:
            return false
        }
    }

    /// Stops accepting frames; the writer drains the queue, then closes for `reason`.
    func finish(_ reason: Closing) {
        let first = state.withLock { state -> Bool in
            guard state.closing == nil else { return false }
            state.closing = reason
            return true
        }
        if first { sink.finish() }
    }

    /// Cancels every subscription (the connection ended).
    func cancelAll() {
        let tasks = state.withLock { state in
            defer { state.subscriptions.removeAll() }
            return Array(state.subscriptions.values)
        }
        for task in tasks { task.cancel() }
    }

    /// Answers one text message.
    func handle(_ text: String) async {
        let (parsed, id) = ClientOp.parse(text)
        switch parsed {
        case .failure(let error):
            send(ServerFrame.error(error, id: id))
        case .success(.ping):
            send(ServerFrame.simple("pong", id: id))
        case .success(.subscribe(let channel, let since, let epoch)):
            subscribe(channel, since: since, epoch: epoch, id: id)
        case .success(.unsubscribe(let channel)):
            let task = state.withLock { $0.subscriptions.removeValue(forKey: channel) }
            guard let task else {
                send(
                    ServerFrame.error(
                        OpError("not_subscribed", "not subscribed to \(channel)"),
                        channel: channel,
                        id: id
                    )
                )
                return
            }
            task.cancel()
            send(ServerFrame.simple("unsubscribed", channel: channel, id: id))
        case .success(.createCheck(let body)):
            do {
                let creation = try await checks.create(try CheckSpec.validate(body), idempotency: nil)
                send(ServerFrame.created(creation.check.json, id: id))
            } catch let error as HeraldError {
                send(ServerFrame.error(OpError(error), id: id))
            } catch {
                logger.error("create_check failed", metadata: ["error": "\(error)"])
                send(ServerFrame.error(OpError("internal", "an internal error occurred"), id: id))
            }
        }
    }

    private func subscribe(_ channel: ChannelName, since: Offset?, epoch: Epoch?, id: JSONValue?) {
        let refusal = state.withLock { state -> OpError? in
            if state.subscriptions[channel] != nil {
                return OpError("already_subscribed", "already subscribed to \(channel); unsubscribe first")
            }
            if state.subscriptions.count >= configuration.maxSubscriptions {
                return OpError(
                    "too_many_subscriptions",
                    "at most \(configuration.maxSubscriptions) channels per connection"
                )
            }
            return nil
        }
        if let refusal {
            send(ServerFrame.error(refusal, channel: channel, id: id))
            return
        }
        // Unstructured: a subscription outlives the message that started it. It is cancelled
        // by `unsubscribe` or by `cancelAll()` when the connection ends.
        let task = Task { [follower] in
            do {
                let (end, last) = try await follower.follow(
                    channel,
                    after: since,
                    epoch: epoch,
                    onStart: { read in self.send(ServerFrame.subscribed(channel, read, id: id), channel: channel) },
                    emit: { item in
                        guard case .events(let events) = item else { return }
                        for encoded in events {
                            guard self.send(encoded.webSocketFrame, channel: channel, offset: encoded.event.offset)
                            else {
                                throw CancellationError()
                            }
                        }
                    }
                )
                if case .slowConsumer = end { self.finish(.slowConsumer(channel: channel, offset: last)) }
            } catch is CancellationError {
            } catch {
                self.logger.error("subscription failed", metadata: ["error": "\(error)"])
                self.send(ServerFrame.error(OpError("internal", "the subscription failed"), channel: channel, id: id))
            }
            _ = self.state.withLock { $0.subscriptions.removeValue(forKey: channel) }
        }
        state.withLock { $0.subscriptions[channel] = task }
    }
}
