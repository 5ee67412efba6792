internal import GRPCCore
internal import HeraldAccess
internal import HeraldCore
internal import HeraldHTTP
internal import HeraldHub
internal import Logging
internal import Synchronization

/// One `Subscribe` call: commands in, events of many channels out.
///
/// Each channel is followed by ``ChannelFollower`` in its own task (cancelled by
/// `unsubscribe` or when the call ends); all answers go through one ``Outbox`` to the call's
/// writer. The call ends OK once the client closed its side and no subscription is left
/// (a `check:` channel ends after the check's terminal event); it fails as a whole with
/// `RESOURCE_EXHAUSTED` when one channel falls behind the hub's bound, as a WebSocket is cut.
///
/// Each follower is registered under the state's lock with a generation id before it runs,
/// and its answers go out only while it is the channel's current subscription. An
/// `unsubscribe` waits for its follower to end before the next command is read, so a pipelined
/// `unsubscribe` + `subscribe` never duplicates events and no follower outlives its
/// subscription (at most `maxSubscriptions` are alive); a `subscribe` cancelled by an
/// `unsubscribe` before it started is answered with the error `canceled`.
final class SubscribeSession: Sendable {
    private struct State {
        /// Each channel's follower, with its subscribe command's `request_id`.
        var subscriptions = SubscriptionTable<UInt64>()
        var commandsEnded = false
    }

    private let service: HeraldService
    /// Who opened the call (its metadata's token or key); each channel is authorized for it.
    private let principal: Principal
    private let outbox = Outbox<Herald_V1_SubscribeResponse>()
    private let state = Mutex(State())

    init(service: HeraldService, principal: Principal) {
        self.service = service
        self.principal = principal
    }

    func run(
        _ commands: RPCAsyncSequence<Herald_V1_SubscribeRequest, any Error>,
        writer: RPCWriter<Herald_V1_SubscribeResponse>,
        watch: WriteWatch
    ) async throws {
        do {
            // A throwing body cancels the reader by itself; an ended one must stop it.
            try await withThrowingDiscardingTaskGroup { group in
                group.addTask { await self.read(commands) }
                try await outbox.drain { response in try await watch.write { try await writer.write(response) } }
                group.cancelAll()
            }
        } catch {
            await cancelAll()
            throw error
        }
        await cancelAll()
    }

    private func read(_ commands: RPCAsyncSequence<Herald_V1_SubscribeRequest, any Error>) async {
        do {
            for try await command in commands {
                try await handle(command)
            }
            let isIdle = state.withLock { state in
                state.commandsEnded = true
                return state.subscriptions.isEmpty
            }
            if isIdle { outbox.finish() }
        } catch {
            outbox.fail(error)
        }
    }

    private func handle(_ command: Herald_V1_SubscribeRequest) async throws {
        let requestID = command.requestID
        switch command.command {
        case .subscribe(let subscribe)?:
            guard let channel = ChannelName(subscribe.channel) else {
                return try await refuse("invalid", ChannelName.rule, requestID)
            }
            do {
                try service.access.authorizeRead(channel, by: principal)
            } catch {
                return try await refuse(error.code.opCode, error.message, requestID)
            }
            let epoch = subscribe.epoch.isEmpty ? nil : Epoch(subscribe.epoch)
            let position: Offset? =
                if subscribe.fromStart { 0 } else if epoch != nil || subscribe.afterOffset > 0 {
                    Offset(clamping: subscribe.afterOffset)
                } else { nil }
            try await start(channel, after: position, epoch: epoch, requestID: requestID)
        case .unsubscribe(let unsubscribe)?:
            let removed = ChannelName(unsubscribe.channel).flatMap { channel in
                state.withLock { $0.subscriptions.remove(channel) }
            }
            guard let removed else {
                return try await refuse("not_subscribed", "not subscribed to \(unsubscribe.channel)", requestID)
            }
            removed.task.cancel()
            // At most one write away: a follower waiting for the writer ends after that write.
            await removed.task.value
            if !removed.started {
                try await refuse(
                    "canceled",
                    "unsubscribed before the subscription to \(unsubscribe.channel) started",
                    removed.request
                )
            }
            finishIfIdle()
        case nil:
            try await refuse("invalid", "a request needs a command: subscribe or unsubscribe", requestID)
        }
    }

    private func start(_ channel: ChannelName, after position: Offset?, epoch: Epoch?, requestID: UInt64) async throws {
        let maximum = service.configuration.maxSubscriptions
        let refusal = state.withLock { state -> (code: String, message: String)? in
            if let refusal = state.subscriptions.refusal(channel, maximum: maximum, per: "call") { return refusal }
            state.subscriptions.add(channel, request: requestID) { id in
                Task { await self.follow(channel, id: id, after: position, epoch: epoch, requestID: requestID) }
            }
            return nil
        }
        if let (code, message) = refusal { try await refuse(code, message, requestID) }
    }

    /// Sends `response` for the subscription `id` of `channel` if it is still the current one;
    /// throws `CancellationError` otherwise. The first marks it started (answered), so an
    /// `unsubscribe` after it does not answer `canceled` too.
    private func send(_ response: Herald_V1_SubscribeResponse, of channel: ChannelName, id: UInt64) async throws {
        let current = state.withLock { $0.subscriptions.answer(channel, generation: id) }
        guard current else { throw CancellationError() }
        try await outbox.send(response)
    }

    private func follow(
        _ channel: ChannelName,
        id: UInt64,
        after position: Offset?,
        epoch: Epoch?,
        requestID: UInt64
    )
        async
    {
        do {
            try await service.follow(
                channel,
                after: position,
                epoch: epoch,
                onStart: { read in
                    var subscribed = Herald_V1_Subscribed()
                    subscribed.channel = channel.rawValue
                    subscribed.epoch = read.epoch.rawValue
                    subscribed.offset = UInt64(read.next)
                    subscribed.recovered = read.recovered
                    subscribed.requestID = requestID
                    var response = Herald_V1_SubscribeResponse()
                    response.subscribed = subscribed
                    try await send(response, of: channel, id: id)
                },
                emit: { item in
                    switch item {
                    case .events(let events):
                        for encoded in events {
                            var response = Herald_V1_SubscribeResponse()
                            response.event = Herald_V1_Event(encoded.event)
                            try await send(response, of: channel, id: id)
                        }
                    case .reset(_, atStart: true):
                        break  // told by `subscribed.recovered`
                    case .reset(let read, atStart: false):
                        // A later loss (trimmed while paging, a new epoch under the stream).
                        var response = Herald_V1_SubscribeResponse()
                        response.event = Herald_V1_Event(reset: read, channel: channel)
                        try await send(response, of: channel, id: id)
                    case .heartbeat:
                        break
                    }
                }
            )
        } catch is CancellationError {
        } catch let error as RPCError {
            if !Task.isCancelled { outbox.fail(error) }
        } catch {
            // A refusal, or a store that is down (`unavailable`: the client retries); anything
            // else is a bug. Only while it is still the current subscription, as every answer:
            // an `unsubscribe` that removed it first answers the subscribe itself (`canceled`).
            let refusal: Herald_V1_SubscribeResponse
            if let error = HeraldError(error), error.code != .internal {
                refusal = Self.refusal(error.code.opCode, error.message, requestID)
            } else {
                if !Task.isCancelled {
                    service.logger.error("subscription failed", metadata: ["error": "\(error)"])
                }
                refusal = Self.refusal("internal", "the subscription to \(channel) failed", requestID)
            }
            try? await send(refusal, of: channel, id: id)
        }
        state.withLock { $0.subscriptions.ended(channel, generation: id) }
        finishIfIdle()
    }

    private func refuse(_ code: String, _ message: String, _ requestID: UInt64) async throws {
        try await outbox.send(Self.refusal(code, message, requestID))
    }

    private static func refusal(_ code: String, _ message: String, _ requestID: UInt64) -> Herald_V1_SubscribeResponse {
        var error = Herald_V1_CommandError()
        error.code = code
        error.message = message
        error.requestID = requestID
        var response = Herald_V1_SubscribeResponse()
        response.error = error
        return response
    }

    /// Ends the call once the client is done sending and nothing is followed any more.
    private func finishIfIdle() {
        if state.withLock({ $0.commandsEnded && $0.subscriptions.isEmpty }) { outbox.finish() }
    }

    /// Cancels every subscription and waits until each has left the hub.
    private func cancelAll() async {
        let tasks = state.withLock { $0.subscriptions.removeAll() }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }
}
