internal import HeraldAccess
internal import HeraldCore
internal import HeraldHub
internal import HeraldRunner
internal import HeraldStore
internal import Logging
internal import NIOCore

/// One channel the connection follows.
struct Subscription {
    let follower: LoopFollower
    /// The subscribe op's `id`, for its answer.
    let request: JSONValue?
    /// Whether `subscribed` went out (an `unsubscribe` before it also answers the subscribe).
    var started = false
}

/// A connection's subscriptions by channel, in the order they were made: an array searched in
/// order, since a connection has few (at most `ws-max-subscriptions`, 256) and the search runs
/// per op, never per event. An idle connection with one subscription keeps 96 bytes for it,
/// where a dictionary keeps 168.
struct Subscriptions: Sequence {
    private var entries: [(channel: ChannelName, subscription: Subscription)] = []

    var count: Int { entries.count }

    var values: some Sequence<Subscription> { entries.lazy.map(\.subscription) }

    /// Setting `nil` removes the channel's subscription.
    subscript(channel: ChannelName) -> Subscription? {
        get { entries.first { $0.channel == channel }?.subscription }
        set {
            let index = entries.firstIndex { $0.channel == channel }
            switch (index, newValue) {
            case (let index?, let subscription?): entries[index].subscription = subscription
            case (let index?, nil): entries.remove(at: index)
            case (nil, let subscription?): entries.append((channel, subscription))
            case (nil, nil): break
            }
        }
    }

    mutating func removeValue(forKey channel: ChannelName) -> Subscription? {
        guard let index = entries.firstIndex(where: { $0.channel == channel }) else { return nil }
        return entries.remove(at: index).subscription
    }

    mutating func removeAll() {
        entries = []
    }

    func makeIterator() -> some IteratorProtocol<(channel: ChannelName, subscription: Subscription)> {
        entries.makeIterator()
    }
}

// The ops of `docs/protocol.md`, answered in order. Every op gets an answer; malformed or
// unknown ones an `error` op, never a disconnect. Subscriptions follow their channels on the
// loop (``LoopFollower``); ops that need I/O run in a short task and answer back on the loop.
extension WebSocketConnection {
    /// A text message arrived: it is answered after those before it.
    func received(_ text: String) {
        waiting.append(text)
        answerWaiting()
    }

    /// Answers waiting messages until one needs I/O.
    func answerWaiting() {
        while isStarted, !isBusy, !isClosing, !waiting.isEmpty {
            handle(waiting.removeFirst())
        }
        // An idle connection keeps no buffer for messages; a closing one answers no more.
        if waiting.isEmpty || isClosing { waiting = [] }
        resumeReading()
    }

    /// Runs `work` off the loop, then `done` with its result on the loop; later messages wait.
    private func perform<Value: Sendable>(
        _ work: @escaping @Sendable () async -> Value,
        then done: @escaping (WebSocketConnection, Value) -> Void
    ) {
        guard let context else { return }
        isBusy = true
        let connection = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        let done = NIOLoopBound(done, eventLoop: loop)
        Task {
            let value = await work()
            loop.execute {
                let connection = connection.value
                connection.isBusy = false
                done.value(connection, value)
                connection.answerWaiting()
            }
        }
    }

    private func handle(_ text: String) {
        let (parsed, id) = ClientOp.parse(text)
        let access = endpoint.access
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
            return send(ServerFrame.error(OpError(error), channel: channel, id: id))
        }
        switch parsed {
        case .failure(let error):
            send(ServerFrame.error(error, id: id))
        case .success(.ping):
            send(ServerFrame.simple("pong", id: id))
        case .success(.subscribe(let channel, let since, let epoch)):
            subscribe(channel, since: since, epoch: epoch, id: id)
        case .success(.unsubscribe(let channel)):
            unsubscribe(channel, id: id)
        case .success(.auth(let token)):
            perform {
                await Self.authenticate(token, with: access)
            } then: {
                $0.authenticated($1, id: id)
            }
        case .success(.publish(let channel, let type, let data)):
            let (principal, address, events) = (principal, address, endpoint.events)
            answer(id: id, channel: channel) {
                try access.authorizePublish(channel, by: principal)
                try access.limits.take(.publishes, by: principal, address: address)
                return ServerFrame.published(try await events.publish(type: type, data: data, to: channel), id: id)
            }
        case .success(.createCheck(let body)):
            let (principal, address, checks) = (principal, address, endpoint.checks)
            answer(id: id) {
                let spec = try CheckSpec.validate(body)
                try access.authorizeCreate(spec, by: principal)
                try access.limits.take(.creates, by: principal, address: address)
                let (owner, cancelToken) = access.owner(for: principal)
                let creation = try await checks.create(spec, idempotency: nil, owner: owner)
                return ServerFrame.created(creation.check.createdJSON(cancelToken: cancelToken), id: id)
            }
        }
    }

    /// Sends what `body` answers, off the loop, or its error as an `error` op.
    private func answer(
        id: JSONValue?,
        channel: ChannelName? = nil,
        _ body: @escaping @Sendable () async throws -> String
    ) {
        let logger = logger
        perform { () async -> String in
            do {
                return try await body()
            } catch {
                if let error = HeraldError(error) {
                    return ServerFrame.error(OpError(error), channel: channel, id: id)
                }
                logger.error("an op failed", metadata: ["error": "\(error)"])
                return ServerFrame.error(OpError("internal", "an internal error occurred"), channel: channel, id: id)
            }
        } then: {
            $0.send($1)
        }
    }

    // MARK: subscriptions

    private func subscribe(_ channel: ChannelName, since: Offset?, epoch: Epoch?, id: JSONValue?) {
        guard let context else { return }
        if let refusal = SubscriptionTable<JSONValue?>.refusal(
            channel,
            isFollowed: subscriptions[channel] != nil,
            count: subscriptions.count,
            maximum: configuration.maxSubscriptions,
            per: "connection"
        ) {
            return send(ServerFrame.error(OpError(refusal.code, refusal.message), channel: channel, id: id))
        }
        do throws(HeraldError) {
            try endpoint.access.authorizeRead(channel, by: principal)
        } catch {
            return send(ServerFrame.error(OpError(error), channel: channel, id: id))
        }
        let follow = endpoint.follower
        let follower = LoopFollower(
            channel: channel,
            position: since,
            epoch: epoch,
            store: follow.store,
            hub: follow.hub,
            pageSize: follow.pageSize,
            loop: context.eventLoop,
            output: self
        )
        subscriptions[channel] = Subscription(follower: follower, request: id)
        guard follower.start() else {
            subscriptions[channel] = nil
            return finish(.restart)  // the server is draining
        }
    }

    private func unsubscribe(_ channel: ChannelName, id: JSONValue?) {
        guard let subscription = subscriptions.removeValue(forKey: channel) else {
            let error = OpError("not_subscribed", "not subscribed to \(channel)")
            return send(ServerFrame.error(error, channel: channel, id: id))
        }
        subscription.follower.stop()
        if subscription.follower.isReading {
            // Its store read still runs: the next ops wait for it, so pipelined subscribes and
            // unsubscribes cannot pile up reads.
            isBusy = true
            subscription.follower.whenSettled = { [weak self] in
                self?.isBusy = false
                self?.answerWaiting()
            }
        }
        if !subscription.started {
            let canceled = OpError("canceled", "unsubscribed before the subscription to \(channel) started")
            send(ServerFrame.error(canceled, channel: channel, id: subscription.request))
        }
        send(ServerFrame.simple("unsubscribed", channel: channel, id: id))
    }

    /// Stops every subscription and the expiry timer: the connection is closing.
    func stopEverything() {
        for subscription in subscriptions.values { subscription.follower.stop() }
        subscriptions.removeAll()
        expiryTimer?.cancel()
        expiryTimer = nil
        waiting = []
    }

    /// The subscription `follower` serves, if it is still the channel's current one.
    private func current(_ follower: LoopFollower) -> Subscription? {
        guard let subscription = subscriptions[follower.channel], subscription.follower === follower else { return nil }
        return subscription
    }

    // MARK: access

    /// The upgrade request's credential (`Authorization` or `?access_token=`); a bad one is told
    /// with an `error` op, and the connection stays anonymous until an `auth` op.
    func authenticateUpgrade(_ bearer: String) {
        let access = endpoint.access
        perform {
            await Self.authenticate(bearer, with: access)
        } then: { connection, result in
            switch result {
            case .success(let principal): connection.adopt(principal)
            case .failure(let error): connection.send(ServerFrame.error(OpError(error), id: nil))
            }
        }
    }

    private static func authenticate(_ bearer: String, with access: Access) async -> Result<Principal, HeraldError> {
        do {
            return .success(try await access.authenticate(bearer))
        } catch {
            return .failure(error)
        }
    }

    /// The `auth` op's outcome: a first or refreshed token. Subscriptions the new token no
    /// longer grants stop with their refusal.
    private func authenticated(_ result: Result<Principal, HeraldError>, id: JSONValue?) {
        let principal: Principal
        switch result {
        case .success(let value): principal = value
        case .failure(let error): return send(ServerFrame.error(OpError(error), id: id))
        }
        adopt(principal)
        if case .client(let grant) = principal {
            send(ServerFrame.authed(expires: grant.exp, subject: grant.subject, id: id))
        } else {
            send(ServerFrame.simple("authed", id: id))
        }
        let access = endpoint.access
        for (channel, refusal) in stop(where: { channel -> HeraldError? in
            do throws(HeraldError) {
                try access.authorizeRead(channel, by: principal)
                return nil
            } catch {
                return error
            }
        }) {
            send(ServerFrame.error(OpError(refusal), channel: channel, id: nil))
        }
    }

    /// Makes `principal` the connection's, with a timer for its expiry.
    private func adopt(_ principal: Principal) {
        self.principal = principal
        expiryTimer?.cancel()
        expiryTimer = principal.expires.flatMap(timer(for:))
    }

    /// A timer that calls ``expire()`` at `expires`.
    private func timer(for expires: Timestamp) -> Scheduled<Void>? {
        guard let context else { return nil }
        let milliseconds = expires.millisecondsSince1970 - Timestamp.now().millisecondsSince1970
        let connection = NIOLoopBound(self, eventLoop: context.eventLoop)
        return context.eventLoop.scheduleTask(in: .milliseconds(Int64(max(0, milliseconds)))) {
            connection.value.expire()
        }
    }

    /// The token expired with no fresh `auth`: the subscriptions it granted stop, and the
    /// client is told which (`{"op": "expired", "channels": [...]}`); it may `auth` again and
    /// subscribe from its positions.
    private func expire() {
        expiryTimer = nil
        guard let expires = principal.expires else { return }
        guard expires.millisecondsSince1970 <= Timestamp.now().millisecondsSince1970 else {
            expiryTimer = timer(for: expires)  // the wall clock stepped back meanwhile
            return
        }
        principal = .anonymous
        let access = endpoint.access
        let stopped = stop(where: { access.isOpen($0) ? nil : HeraldError(.tokenExpired, "the token expired") })
        send(ServerFrame.expired(stopped.map(\.0)))
    }

    /// Stops the subscriptions `refusal` refuses, silently, in channel order.
    private func stop(where refusal: (ChannelName) -> HeraldError?) -> [(ChannelName, HeraldError)] {
        var stopped: [(ChannelName, HeraldError)] = []
        for (channel, subscription) in subscriptions {
            guard let reason = refusal(channel) else { continue }
            subscription.follower.stop()
            subscriptions[channel] = nil
            stopped.append((channel, reason))
        }
        return stopped.sorted { $0.0.rawValue < $1.0.rawValue }
    }
}

// What a subscription's follower hands over, framed as ops.
extension WebSocketConnection: LoopFollowerOutput {
    func started(_ follower: LoopFollower, _ read: EventRead) {
        guard let subscription = current(follower) else { return }
        subscriptions[follower.channel]?.started = true
        write(opFrame(ServerFrame.subscribed(follower.channel, read, id: subscription.request)))
    }

    func reset(_ follower: LoopFollower, _ read: EventRead) {
        guard current(follower) != nil else { return }
        write(opFrame(ServerFrame.reset(follower.channel, read)))
    }

    func write(_ events: [EncodedEvent], of follower: LoopFollower, isWritable: Bool) {
        for event in events { write(frame(of: event)) }
    }

    func isOverBound(_ follower: LoopFollower) -> Bool { isOverBound }

    func flush() { context?.flush() }

    func tick(_ follower: LoopFollower, _ now: ContinuousClock.Instant) {}

    func ended(_ follower: LoopFollower, _ end: LoopFollower.End) {
        guard let subscription = current(follower) else { return }
        subscriptions[follower.channel] = nil
        switch end {
        case .checkEnded:
            break  // the terminal event was the last
        case .slowConsumer:
            finish(.slowConsumer(channel: follower.channel, offset: follower.last))
        case .drained:
            finish(.restart)
        case .readFailed(let error):
            // A store that is down is `unavailable` (the client retries); anything else a bug.
            let opError: OpError
            if let error = HeraldError(error), error.code != .internal {
                opError = OpError(error)
            } else {
                logger.error("subscription failed", metadata: ["error": "\(error)"])
                opError = OpError("internal", "the subscription failed")
            }
            send(ServerFrame.error(opError, channel: follower.channel, id: subscription.request))
        }
    }

}
