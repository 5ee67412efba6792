internal import HeraldCore
internal import HeraldHTTP
internal import HeraldRunner
internal import HeraldStore
internal import Logging
internal import NIOCore
internal import Synchronization

/// One WebSocket connection's state: its subscriptions and its bounded outgoing queue.
///
/// Every frame goes through one queue to one writer task, bounded in frames and in bytes, so a
/// slow client never blocks a publisher and never holds more than its bound: past it the
/// connection is cut with `slow_consumer`. Each subscription runs ``ChannelFollower`` in its
/// own task, registered under the state's lock with a generation id before it can run, so its
/// own end removes only itself (a pipelined `unsubscribe` + `subscribe` never leaves an orphan).
/// Follower tasks alive at once, including those still winding down after `unsubscribe`, are
/// at most twice `maxSubscriptions`: past that, reading the next op waits for one to end.
final class WebSocketSession: Sendable {
    /// Why the writer stops, which decides the close code.
    enum Closing: Sendable {
        case clientClosed
        case slowConsumer(channel: ChannelName, offset: Offset)
        case messageTooLarge
        case restart
    }

    private struct Subscription {
        let id: UInt64
        let task: Task<Void, Never>
        /// The `id` of the subscribe op, for its answer.
        let requestID: JSONValue?
        /// Whether `subscribed` was queued (else `unsubscribe` answers the subscribe too).
        var started = false
    }

    private struct State {
        var subscriptions: [ChannelName: Subscription] = [:]
        var nextID: UInt64 = 0
        /// Follower tasks started and not yet ended (subscribed, or winding down).
        var liveFollowers = 0
        /// The op reader, waiting for a follower to end before it starts another.
        var slotWaiter: CheckedContinuation<Void, Never>?
        var queuedBytes = 0
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
        enqueue(channel: channel, offset: offset) { _ in [frame] }
    }

    /// Queues the frames `frames` picks under the lock (`nil`: none, and `false` is returned),
    /// in one critical section, so nothing queued by another op or subscription comes between
    /// the decision and the frames. Past the queue's bound the connection is cut instead.
    private func enqueue(
        channel: ChannelName?,
        offset: Offset,
        frames: (inout State) -> [ByteBuffer]?
    ) -> Bool {
        let outcome = state.withLock { state -> Bool? in
            guard state.closing == nil, let frames = frames(&state) else { return nil }
            let size = frames.reduce(0) { $0 + $1.readableBytes }
            guard state.queuedBytes + size <= configuration.maxQueuedBytes else { return false }
            for frame in frames {
                // Yielding to an AsyncStream never waits; under the lock it keeps the order.
                guard case .enqueued = sink.yield(frame) else { return false }
            }
            state.queuedBytes += size
            return true
        }
        guard let outcome else { return false }
        if !outcome { finish(.slowConsumer(channel: channel ?? ChannelName("connection")!, offset: offset)) }
        return outcome
    }

    /// Queues a frame of the subscription `generation` on `channel`, only while it is the
    /// current one: after `unsubscribe` (or a newer `subscribe`) it sends nothing more.
    private func send(_ frame: ByteBuffer, of channel: ChannelName, generation: UInt64, offset: Offset = 0) -> Bool {
        enqueue(channel: channel, offset: offset) { state in
            guard state.subscriptions[channel]?.id == generation else { return nil }
            state.subscriptions[channel]?.started = true
            return [frame]
        }
    }

    /// The writer wrote a frame of `size` bytes: it no longer counts against the queue's bound.
    func sent(_ size: Int) {
        state.withLock { $0.queuedBytes -= size }
    }

    /// Stops accepting frames; the writer drains the queue, then closes for `reason`.
    func finish(_ reason: Closing) {
        let (first, waiter) = state.withLock { state -> (Bool, CheckedContinuation<Void, Never>?) in
            guard state.closing == nil else { return (false, nil) }
            state.closing = reason
            defer { state.slotWaiter = nil }
            return (true, state.slotWaiter)
        }
        waiter?.resume()
        if first { sink.finish() }
    }

    /// Answers one text message. Every op gets an answer.
    func handle(_ text: String) async {
        let (parsed, id) = ClientOp.parse(text)
        switch parsed {
        case .failure(let error):
            send(ServerFrame.error(error, id: id))
        case .success(.ping):
            send(ServerFrame.simple("pong", id: id))
        case .success(.subscribe(let channel, let since, let epoch)):
            await subscribe(channel, since: since, epoch: epoch, id: id)
        case .success(.unsubscribe(let channel)):
            // One critical section: the subscription goes, its subscribe is answered if it had
            // not started, and `unsubscribed` is queued; nothing of it can follow.
            var task: Task<Void, Never>?
            let answered = enqueue(channel: channel, offset: 0) { state in
                guard let subscription = state.subscriptions.removeValue(forKey: channel) else { return nil }
                task = subscription.task
                var frames: [String] = []
                if !subscription.started {
                    let canceled = OpError("canceled", "unsubscribed before the subscription to \(channel) started")
                    frames.append(ServerFrame.error(canceled, channel: channel, id: subscription.requestID))
                }
                frames.append(ServerFrame.simple("unsubscribed", channel: channel, id: id))
                return frames.map { ByteBuffer(string: $0) }
            }
            task?.cancel()
            if !answered, closing == nil {
                send(
                    ServerFrame.error(
                        OpError("not_subscribed", "not subscribed to \(channel)"),
                        channel: channel,
                        id: id
                    )
                )
            }
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

    private func subscribe(_ channel: ChannelName, since: Offset?, epoch: Epoch?, id: JSONValue?) async {
        guard await followerSlot() else { return }
        let maximum = configuration.maxSubscriptions
        let refusal = state.withLock { state -> OpError? in
            if state.subscriptions[channel] != nil {
                return OpError("already_subscribed", "already subscribed to \(channel); unsubscribe first")
            }
            if state.subscriptions.count >= maximum {
                return OpError("too_many_subscriptions", "at most \(maximum) channels per connection")
            }
            // Registered under the lock before it runs, so its own end finds it.
            state.nextID += 1
            state.liveFollowers += 1
            let generation = state.nextID
            let task = Task { await self.follow(channel, generation: generation, since: since, epoch: epoch, id: id) }
            state.subscriptions[channel] = Subscription(id: generation, task: task, requestID: id)
            return nil
        }
        if let refusal { send(ServerFrame.error(refusal, channel: channel, id: id)) }
    }

    /// Waits until fewer than twice `maxSubscriptions` followers are alive; `false` when the
    /// connection closed meanwhile.
    private func followerSlot() async -> Bool {
        let limit = 2 * configuration.maxSubscriptions
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = state.withLock { state -> Bool in
                guard state.closing == nil, state.liveFollowers >= limit else { return true }
                state.slotWaiter = continuation
                return false
            }
            if ready { continuation.resume() }
        }
        return closing == nil
    }

    /// One subscription's task: follows the channel until `unsubscribe`, the connection's end,
    /// a slow-consumer cut or a check's end, then removes itself if still registered. Its
    /// frames go out only while it is the channel's current subscription.
    private func follow(_ channel: ChannelName, generation: UInt64, since: Offset?, epoch: Epoch?, id: JSONValue?) async
    {
        func send(_ frame: ByteBuffer, offset: Offset = 0) throws {
            guard self.send(frame, of: channel, generation: generation, offset: offset) else {
                throw CancellationError()
            }
        }
        do {
            let (end, last) = try await follower.follow(
                channel,
                after: since,
                epoch: epoch,
                onStart: { read in
                    try send(ByteBuffer(string: ServerFrame.subscribed(channel, read, id: id)))
                },
                emit: { item in
                    switch item {
                    case .events(let events):
                        for encoded in events { try send(encoded.webSocketFrame, offset: encoded.event.offset) }
                    case .reset(_, atStart: true):
                        break  // told by `subscribed`
                    case .reset(let read, atStart: false):
                        // A later loss (trimmed while paging, a new epoch under the stream).
                        try send(ByteBuffer(string: ServerFrame.reset(channel, read)))
                    case .heartbeat:
                        // The WebSocket library pings; this only notices an unsubscribe.
                        try Task.checkCancellation()
                    }
                }
            )
            if case .slowConsumer = end { finish(.slowConsumer(channel: channel, offset: last)) }
        } catch is CancellationError {
        } catch {
            logger.error("subscription failed", metadata: ["error": "\(error)"])
            _ = self.send(
                ByteBuffer(
                    string: ServerFrame.error(OpError("internal", "the subscription failed"), channel: channel, id: id)
                ),
                of: channel,
                generation: generation
            )
        }
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if state.subscriptions[channel]?.id == generation { state.subscriptions[channel] = nil }
            state.liveFollowers -= 1
            defer { state.slotWaiter = nil }
            return state.slotWaiter
        }
        waiter?.resume()
    }

    /// Cancels every subscription and waits for their tasks, so none outlives the connection.
    func close() async {
        let tasks = state.withLock { state in
            defer { state.subscriptions.removeAll() }
            return state.subscriptions.values.map(\.task)
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }
}
