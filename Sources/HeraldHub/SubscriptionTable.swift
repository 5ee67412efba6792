package import HeraldCore

/// The channels one gRPC `Subscribe` call follows, each by a follower task: the bookkeeping
/// kept inside the session's lock. (A WebSocket's subscriptions live on its event loop, as
/// ``LoopFollower``s, and need no lock.)
///
/// A subscription is registered with a fresh generation *before* its task runs, so its own end
/// finds it, and only the current generation of a channel may answer: after `unsubscribe` (or a
/// newer `subscribe`) a follower still winding down sends nothing more. A subscription is
/// *started* once its first answer went out; an `unsubscribe` before that also answers the
/// subscribe (`canceled`).
package struct SubscriptionTable<Request: Sendable>: Sendable {
    package struct Subscription: Sendable {
        package let generation: UInt64
        package let task: Task<Void, Never>
        /// The subscribe's request id, for its answer.
        package let request: Request
        /// Whether an answer of it went out.
        package var started = false
    }

    private var subscriptions: [ChannelName: Subscription] = [:]
    private var lastGeneration: UInt64 = 0

    package init() {}

    package var isEmpty: Bool { subscriptions.isEmpty }

    /// Why `channel` cannot be followed now: it is followed already, or `maximum` channels are
    /// (a refusal's `code` and `message`, `unit` naming what holds them: "connection", "call").
    package func refusal(
        _ channel: ChannelName,
        maximum: Int,
        per unit: String
    ) -> (code: String, message: String)? {
        Self.refusal(
            channel,
            isFollowed: subscriptions[channel] != nil,
            count: subscriptions.count,
            maximum: maximum,
            per: unit
        )
    }

    /// The same refusal for any holder of subscriptions (a WebSocket keeps its own, on its loop):
    /// `channel` is followed already, or `count` of `maximum` channels are.
    package static func refusal(
        _ channel: ChannelName,
        isFollowed: Bool,
        count: Int,
        maximum: Int,
        per unit: String
    ) -> (code: String, message: String)? {
        if isFollowed {
            return ("already_subscribed", "already subscribed to \(channel); unsubscribe first")
        }
        if count >= maximum {
            return ("too_many_subscriptions", "at most \(maximum) channels per \(unit)")
        }
        return nil
    }

    /// Registers `channel`'s follower, made by `start` with its generation before it can run.
    package mutating func add(_ channel: ChannelName, request: Request, start: (UInt64) -> Task<Void, Never>) {
        lastGeneration += 1
        subscriptions[channel] = Subscription(generation: lastGeneration, task: start(lastGeneration), request: request)
    }

    /// Whether `generation` is `channel`'s current subscription; if so it is now started.
    package mutating func answer(_ channel: ChannelName, generation: UInt64) -> Bool {
        guard subscriptions[channel]?.generation == generation else { return false }
        subscriptions[channel]?.started = true
        return true
    }

    /// Removes `channel`'s subscription (`unsubscribe`); its task is the caller's to cancel.
    package mutating func remove(_ channel: ChannelName) -> Subscription? {
        subscriptions.removeValue(forKey: channel)
    }

    /// The follower `generation` of `channel` ended: removes it if it is still the current one.
    package mutating func ended(_ channel: ChannelName, generation: UInt64) {
        if subscriptions[channel]?.generation == generation { subscriptions[channel] = nil }
    }

    /// Removes the subscriptions `refusal` refuses, with its reason, in channel order.
    package mutating func remove<Reason>(
        where refusal: (ChannelName) -> Reason?
    ) -> [(channel: ChannelName, reason: Reason, subscription: Subscription)] {
        var removed: [(channel: ChannelName, reason: Reason, subscription: Subscription)] = []
        for (channel, subscription) in subscriptions {
            guard let reason = refusal(channel) else { continue }
            subscriptions[channel] = nil
            removed.append((channel, reason, subscription))
        }
        return removed.sorted { $0.channel.rawValue < $1.channel.rawValue }
    }

    /// Removes every subscription; their tasks are the caller's to cancel and await.
    package mutating func removeAll() -> [Task<Void, Never>] {
        defer { subscriptions.removeAll() }
        return subscriptions.values.map(\.task)
    }
}
