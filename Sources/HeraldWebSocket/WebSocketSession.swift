internal import HeraldAccess
internal import HeraldCore
internal import HeraldHTTP
internal import HeraldHub
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

    private struct State {
        /// Each channel's follower, with its subscribe op's `id`.
        var subscriptions = SubscriptionTable<JSONValue?>()
        /// Follower tasks started and not yet ended (subscribed, or winding down).
        var liveFollowers = 0
        /// The op reader, waiting for a follower to end before it starts another.
        var slotWaiter: CheckedContinuation<Void, Never>?
        var queuedBytes = 0
        var closing: Closing?
        /// Who the connection speaks for: its upgrade's credential, then each `auth` op's.
        var principal = Principal.anonymous
        /// Stops what the token granted at its expiry, unless a fresh `auth` replaced it.
        var expiryTimer: Task<Void, Never>?
    }

    private let state = Mutex(State())
    private let sink: AsyncStream<ByteBuffer>.Continuation
    private let follower: ChannelFollower
    private let checks: CheckService
    private let events: EventLog
    private let access: Access
    private let configuration: WebSocketConfiguration
    private let logger: Logger
    /// The client's address, for rate limits.
    private let address: String?

    init(
        sink: AsyncStream<ByteBuffer>.Continuation,
        follower: ChannelFollower,
        checks: CheckService,
        events: EventLog,
        access: Access,
        configuration: WebSocketConfiguration,
        logger: Logger,
        address: String?
    ) {
        self.address = address
        self.sink = sink
        self.follower = follower
        self.checks = checks
        self.events = events
        self.access = access
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
            state.subscriptions.answer(channel, generation: generation) ? [frame] : nil
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
        do {
            try access.limits.take(.webSocketOps, by: principal, address: address)
        } catch {
            // The channel too, when the op names one, so a client knows which to send again.
            var channel: ChannelName?
            switch parsed {
            case .success(.subscribe(let name, _, _)), .success(.unsubscribe(let name)),
                .success(.publish(let name, _, _)):
                channel = name
            default: break
            }
            send(ServerFrame.error(OpError(error), channel: channel, id: id))
            return
        }
        switch parsed {
        case .failure(let error):
            send(ServerFrame.error(error, id: id))
        case .success(.ping):
            send(ServerFrame.simple("pong", id: id))
        case .success(.subscribe(let channel, let since, let epoch)):
            do {
                try access.authorizeRead(channel, by: principal)
            } catch {
                send(ServerFrame.error(OpError(error), channel: channel, id: id))
                return
            }
            await subscribe(channel, since: since, epoch: epoch, id: id)
        case .success(.auth(let token)):
            await authenticate(token, id: id)
        case .success(.publish(let channel, let type, let data)):
            await answer(id: id, channel: channel) {
                try access.authorizePublish(channel, by: principal)
                try access.limits.take(.publishes, by: principal, address: address)
                return ServerFrame.published(try await events.publish(type: type, data: data, to: channel), id: id)
            }
        case .success(.unsubscribe(let channel)):
            // One critical section: the subscription goes, its subscribe is answered if it had
            // not started, and `unsubscribed` is queued; nothing of it can follow.
            var task: Task<Void, Never>?
            let answered = enqueue(channel: channel, offset: 0) { state in
                guard let subscription = state.subscriptions.remove(channel) else { return nil }
                task = subscription.task
                var frames: [String] = []
                if !subscription.started {
                    let canceled = OpError("canceled", "unsubscribed before the subscription to \(channel) started")
                    frames.append(ServerFrame.error(canceled, channel: channel, id: subscription.request))
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
            await answer(id: id) {
                let principal = principal
                let spec = try CheckSpec.validate(body)
                try access.authorizeCreate(spec, by: principal)
                try access.limits.take(.creates, by: principal, address: address)
                let (owner, cancelToken) = access.owner(for: principal)
                let creation = try await checks.create(spec, idempotency: nil, owner: owner)
                return ServerFrame.created(creation.check.createdJSON(cancelToken: cancelToken), id: id)
            }
        }
    }

    /// Sends what `body` answers, or its error as an `error` op.
    private func answer(id: JSONValue?, channel: ChannelName? = nil, _ body: () async throws -> String) async {
        do {
            send(try await body())
        } catch {
            if let error = HeraldError(error) {
                send(ServerFrame.error(OpError(error), channel: channel, id: id))
            } else {
                logger.error("an op failed", metadata: ["error": "\(error)"])
                send(ServerFrame.error(OpError("internal", "an internal error occurred"), channel: channel, id: id))
            }
        }
    }

    // MARK: Access

    private var principal: Principal { state.withLock { $0.principal } }

    /// Takes the upgrade request's credential (`Authorization` or `?access_token=`); a bad one
    /// is told with an `error` op, and the connection stays anonymous until an `auth` op.
    func start(bearer: String?) async {
        guard bearer != nil else { return }
        do {
            adopt(try await access.authenticate(bearer))
        } catch {
            send(ServerFrame.error(OpError(error), id: nil))
        }
    }

    /// The `auth` op: a first or refreshed token. Subscriptions the new token no longer
    /// grants stop with `channel_forbidden`.
    private func authenticate(_ token: String, id: JSONValue?) async {
        let principal: Principal
        do {
            principal = try await access.authenticate(token)
        } catch {
            send(ServerFrame.error(OpError(error), id: id))
            return
        }
        adopt(principal)
        if case .client(let grant) = principal {
            send(ServerFrame.authed(expires: grant.exp, subject: grant.subject, id: id))
        } else {
            send(ServerFrame.simple("authed", id: id))
        }
        let refused = stop(where: { channel -> HeraldError? in
            do throws(HeraldError) {
                try access.authorizeRead(channel, by: principal)
                return nil
            } catch {
                return error
            }
        })
        for (channel, refusal) in refused {
            send(ServerFrame.error(OpError(refusal), channel: channel, id: nil))
        }
    }

    /// Makes `principal` the connection's, with a timer for its expiry.
    private func adopt(_ principal: Principal) {
        let timer = principal.expires.map(timer(for:))
        let previous = state.withLock { state in
            defer {
                state.principal = principal
                state.expiryTimer = timer
            }
            return state.expiryTimer
        }
        previous?.cancel()
    }

    /// The token expired with no fresh `auth`: the subscriptions it granted stop, and the
    /// client is told which (`{"op": "expired", "channels": [...]}`); it may `auth` again and
    /// subscribe from its positions.
    private func expire() {
        let wasCurrent = state.withLock { state -> Bool in
            guard let expires = state.principal.expires else { return false }
            guard expires.millisecondsSince1970 <= Timestamp.now().millisecondsSince1970 else {
                // The wall clock stepped back while the monotonic one slept: look again later.
                state.expiryTimer = timer(for: expires)
                return false
            }
            state.principal = .anonymous
            return true
        }
        guard wasCurrent else { return }
        let stopped = stop(where: { channel in
            access.isOpen(channel) ? nil : HeraldError(.tokenExpired, "the token expired")
        })
        send(ServerFrame.expired(stopped.map(\.0)))
    }

    /// A task that calls ``expire()`` at `expires`, unless cancelled first.
    private func timer(for expires: Timestamp) -> Task<Void, Never> {
        Task { [weak self] in
            try? await Task.sleep(until: expires.instant)
            guard !Task.isCancelled else { return }
            self?.expire()
        }
    }

    /// Stops the subscriptions `refusal` refuses, as `unsubscribe` does but silently.
    private func stop(where refusal: (ChannelName) -> HeraldError?) -> [(ChannelName, HeraldError)] {
        let stopped = state.withLock { $0.subscriptions.remove(where: refusal) }
        for stop in stopped { stop.subscription.task.cancel() }
        return stopped.map { ($0.channel, $0.reason) }
    }

    private func subscribe(_ channel: ChannelName, since: Offset?, epoch: Epoch?, id: JSONValue?) async {
        guard await followerSlot() else { return }
        let maximum = configuration.maxSubscriptions
        let refusal = state.withLock { state -> OpError? in
            if let refusal = state.subscriptions.refusal(channel, maximum: maximum, per: "connection") {
                return OpError(refusal.code, refusal.message)
            }
            // Again under the lock: the token may have expired, or been replaced, since the op
            // was read, and a subscription registered after `expire()` ran would outlive it.
            do throws(HeraldError) {
                try access.authorizeRead(channel, by: state.principal)
            } catch {
                return OpError(error)
            }
            state.subscriptions.add(channel, request: id) { generation in
                Task { await self.follow(channel, generation: generation, since: since, epoch: epoch, id: id) }
            }
            state.liveFollowers += 1
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
            // A store that is down is `unavailable` (the client retries); anything else a bug.
            let opError: OpError
            if let error = HeraldError(error), error.code != .internal {
                opError = OpError(error)
            } else {
                logger.error("subscription failed", metadata: ["error": "\(error)"])
                opError = OpError("internal", "the subscription failed")
            }
            let frame = ByteBuffer(string: ServerFrame.error(opError, channel: channel, id: id))
            _ = self.send(frame, of: channel, generation: generation)
        }
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.subscriptions.ended(channel, generation: generation)
            state.liveFollowers -= 1
            defer { state.slotWaiter = nil }
            return state.slotWaiter
        }
        waiter?.resume()
    }

    /// Cancels every subscription and waits for their tasks, so none outlives the connection.
    func close() async {
        let tasks = state.withLock { state in
            defer {
                state.expiryTimer?.cancel()
                state.expiryTimer = nil
            }
            return state.subscriptions.removeAll()
        }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }
}
