package import HeraldCore
package import Logging
package import NIOCore
internal import ServiceLifecycle
internal import Synchronization

/// The per-process meeting point of committed events and the clients waiting for them.
///
/// A long poll registers a waiter on a channel *before* it reads the store, then parks; the
/// publication of the next event on that channel wakes it directly (no sleep loop), and it
/// reads again. Timeouts come from one ``DeadlineQueue`` for all waiters. On graceful
/// shutdown every waiter is woken and new waits return at once, so held requests answer
/// before the HTTP server drains.
///
/// Concurrency: all state sits in one `Mutex`; continuations are resumed after the lock is
/// released. Per event, the cost is proportional to the waiters of that channel only.
package final class Hub: Service, Sendable {
    private enum Waiter {
        /// Registered, not parked, nothing happened since the last read.
        case armed
        /// Something happened since the last read: the next park returns at once. Carries the
        /// first event published since then, when an event (not a deadline) was the cause.
        case signaled(EncodedEvent?)
        case parked(CheckedContinuation<Void, Never>)
    }

    private struct WaiterKey: Hashable, Sendable {
        var channel: ChannelName
        var id: UInt64
    }

    /// The newest event position the hub has seen on a channel.
    package struct Head: Sendable, Hashable {
        package var epoch: Epoch
        package var offset: Offset

        package init(epoch: Epoch, offset: Offset) {
            self.epoch = epoch
            self.offset = offset
        }
    }

    /// Most channel heads remembered: 100,000 × ~150 B ≈ 15 MB. Past it the map starts over,
    /// which only sends some readers back to the store.
    package static let maxHeads = 100_000

    private struct State {
        var waiters: [ChannelName: [UInt64: Waiter]] = [:]
        var heads: [ChannelName: Head] = [:]
        var nextID: UInt64 = 0
        var isDraining = false
        var count = 0
    }

    private let state = Mutex(State())
    private let deadlines = DeadlineQueue<WaiterKey>()
    private let subscribers: SubscriberRegistry
    private let loopSubscribers: LoopSubscribers
    private let logger: Logger
    private let onPublish: @Sendable () -> Void

    /// - Parameters:
    ///   - loopInbox: events one event loop may fall behind before its subscribers read from
    ///     the store instead (``LoopSubscribers/maxInbox``; smaller in tests).
    ///   - onPublish: called after each publish (the webhook dispatcher's doorbell: the event's
    ///     deliveries were committed with it).
    package init(
        limits: SubscriberLimits = .init(),
        loopInbox: Int = 65_536,
        logger: Logger = Logger(label: "herald.hub"),
        onPublish: @escaping @Sendable () -> Void = {}
    ) {
        self.subscribers = SubscriberRegistry(limits: limits)
        self.loopSubscribers = LoopSubscribers(inboxLimit: loopInbox)
        self.limits = limits
        self.logger = logger
        self.onPublish = onPublish
    }

    /// Bounds of one streaming subscriber's queue.
    package let limits: SubscriberLimits

    /// Number of streaming subscribers right now.
    package var subscriberCount: Int { subscribers.count + loopSubscribers.count }

    /// Adds a subscriber served on its event loop to `channel`; call on `loop`. Events
    /// announced from now on reach it, so it reads its backlog from the store *after* this.
    /// - Returns: false when the server is draining: the subscriber was not added.
    package func subscribe(_ subscriber: any LoopSubscriber, to channel: ChannelName, on loop: any EventLoop) -> Bool {
        loopSubscribers.subscribe(subscriber, to: channel, on: loop)
    }

    /// Removes a subscriber added by ``subscribe(_:to:on:)``; call on `loop`.
    package func unsubscribe(_ subscriber: any LoopSubscriber, from channel: ChannelName, on loop: any EventLoop) {
        loopSubscribers.unsubscribe(subscriber, from: channel, on: loop)
    }

    /// A streaming client's view of one channel, valid inside ``withSubscription(to:_:)``.
    package struct Subscription: Sendable {
        fileprivate let key: SubscriberRegistry.Key
        fileprivate let registry: SubscriberRegistry

        /// Waits for the next delivery: queued events, a heartbeat after `heartbeat` of
        /// silence, the slow-consumer cut, or the end (shutdown, cancellation).
        package func next(heartbeat: Duration) async -> Delivery {
            await registry.next(key, heartbeat: heartbeat)
        }
    }

    /// Subscribes to `channel` for the duration of `body`.
    ///
    /// The subscription exists before `body` runs, so a stream that reads its backlog from
    /// the store inside `body` misses nothing published meanwhile (it may see an event twice:
    /// streams skip offsets they already sent).
    package func withSubscription<Value: Sendable>(
        to channel: ChannelName,
        _ body: (Subscription) async throws -> Value
    ) async throws -> Value {
        let key = subscribers.subscribe(channel)
        defer { subscribers.unsubscribe(key) }
        return try await body(Subscription(key: key, registry: subscribers))
    }

    /// Number of held waiters (long polls) right now.
    package var waiterCount: Int { state.withLock { $0.count } }

    /// Announces a committed event: wakes every waiter of its channel.
    ///
    /// Call only after the event's transaction committed. Never blocks and never waits.
    package func publish(_ event: Event) {
        let encoded = EncodedEvent(event)
        let wake = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if let head = state.heads[event.channel], head.epoch == event.epoch, head.offset >= event.offset {
                // An older event announced late: the head stays where it is.
            } else {
                if state.heads.count >= Self.maxHeads { state.heads.removeAll(keepingCapacity: true) }
                state.heads[event.channel] = Head(epoch: event.epoch, offset: event.offset)
            }
            guard var channel = state.waiters[event.channel] else { return [] }
            var wake: [CheckedContinuation<Void, Never>] = []
            for (id, waiter) in channel {
                switch waiter {
                case .parked(let continuation):
                    wake.append(continuation)
                    channel[id] = .signaled(encoded)
                case .armed:
                    channel[id] = .signaled(encoded)
                case .signaled:
                    break  // keep the first event: the reader resumes from there, nothing is skipped
                }
            }
            state.waiters[event.channel] = channel
            return wake
        }
        for continuation in wake { continuation.resume() }
        subscribers.deliver(encoded)
        loopSubscribers.deliver(encoded)
        onPublish()
    }

    /// The newest position published on `channel` in this process, if the hub remembers one.
    ///
    /// A reader that registered as a waiter *before* asking can trust "nothing after this":
    /// anything committed but not yet announced will wake it when announced.
    package func head(of channel: ChannelName) -> Head? {
        state.withLock { $0.heads[channel] }
    }

    /// Whether a long poll or a stream of this process waits for `channel`'s next event: what a
    /// cluster's broker asks before it reads an event another node published.
    package func isFollowed(_ channel: ChannelName) -> Bool {
        state.withLock { $0.waiters[channel] != nil } || subscribers.isSubscribed(channel)
            || loopSubscribers.isSubscribed(channel)
    }

    /// Every channel a long poll or a stream of this process waits on.
    package var followedChannels: Set<ChannelName> {
        Set(state.withLock { Array($0.waiters.keys) }).union(subscribers.channels).union(loopSubscribers.channels)
    }

    /// Records that `channel` reached `head` (another node committed it), without announcing
    /// an event: a caught-up reader behind it reads the store instead of waiting. The head only
    /// moves forward within an epoch, so an older event announced later cannot move it back.
    ///
    /// A broker notes a head *before* it looks whether anyone follows the channel, so a reader
    /// that registers after the look sees the new head and reads the store.
    package func noteHead(of channel: ChannelName, _ head: Head) {
        state.withLock { state in
            if let known = state.heads[channel], known.epoch == head.epoch, known.offset >= head.offset { return }
            if state.heads.count >= Self.maxHeads { state.heads.removeAll(keepingCapacity: true) }
            state.heads[channel] = head
        }
    }

    /// Forgets the heads of every channel but `kept` (notifications from other nodes may have
    /// been lost): the next reader of one of them asks the store.
    package func forgetHeads(except kept: Set<ChannelName>) {
        state.withLock { state in state.heads = state.heads.filter { kept.contains($0.key) } }
    }

    /// Repeats `read` until it returns a value, waiting for an event on `channel` between
    /// reads, until `deadline`.
    ///
    /// `read` gets the event that woke the waiter (the first published since the previous
    /// read), already encoded, or `nil` on the first read and after a wake-up by the deadline,
    /// so a reader that sits right before that event answers with shared bytes, without going
    /// back to the store.
    /// - Returns: the first non-`nil` value of `read`, or `nil` at the deadline, on
    ///   cancellation (the client went away), or when the server is draining.
    package func wait<Value: Sendable>(
        on channel: ChannelName,
        until deadline: ContinuousClock.Instant,
        read: (EncodedEvent?) async throws -> Value?
    ) async throws -> Value? {
        let key = register(channel, deadline: deadline)
        defer { unregister(key) }
        var event: EncodedEvent?
        while true {
            if let value = try await read(event) { return value }
            if Task.isCancelled || ContinuousClock.now >= deadline || isDraining { return nil }
            event = await park(key)
        }
    }

    private var isDraining: Bool { state.withLock { $0.isDraining } }

    private func register(_ channel: ChannelName, deadline: ContinuousClock.Instant) -> WaiterKey {
        let key = state.withLock { state in
            state.nextID += 1
            state.count += 1
            state.waiters[channel, default: [:]][state.nextID] = .armed
            return WaiterKey(channel: channel, id: state.nextID)
        }
        deadlines.schedule(key, at: deadline)
        return key
    }

    private func unregister(_ key: WaiterKey) {
        let orphan = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiters[key.channel]?.removeValue(forKey: key.id) else { return nil }
            state.count -= 1
            if state.waiters[key.channel]?.isEmpty == true { state.waiters[key.channel] = nil }
            if case .parked(let continuation) = waiter { return continuation }
            return nil
        }
        orphan?.resume()
    }

    /// Parks until signaled, woken by the deadline queue, cancelled or drained.
    /// - Returns: the event that caused the wake-up, if one did.
    private func park(_ key: WaiterKey) async -> EncodedEvent? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    guard let waiter = state.waiters[key.channel]?[key.id] else { return true }
                    if case .signaled = waiter { return true }
                    if state.isDraining || Task.isCancelled { return true }
                    state.waiters[key.channel]?[key.id] = .parked(continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
            return state.withLock { state -> EncodedEvent? in
                guard case .signaled(let event)? = state.waiters[key.channel]?[key.id] else { return nil }
                state.waiters[key.channel]?[key.id] = .armed
                return event
            }
        } onCancel: {
            signal(key)
        }
    }

    private func signal(_ key: WaiterKey) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiters[key.channel]?[key.id] else { return nil }
            if case .parked(let continuation) = waiter {
                state.waiters[key.channel]?[key.id] = .signaled(nil)
                return continuation
            }
            if case .armed = waiter { state.waiters[key.channel]?[key.id] = .signaled(nil) }
            return nil
        }
        continuation?.resume()
    }

    /// Wakes every waiter and ends every stream and held poll: the server is shutting down.
    package func drain() {
        let wake = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.isDraining = true
            var wake: [CheckedContinuation<Void, Never>] = []
            for (channel, waiters) in state.waiters {
                for (id, waiter) in waiters {
                    if case .parked(let continuation) = waiter {
                        wake.append(continuation)
                        state.waiters[channel]?[id] = .signaled(nil)
                    }
                }
            }
            return wake
        }
        logger.info("draining", metadata: ["herald.waiters": "\(wake.count)", "herald.streams": "\(subscriberCount)"])
        for continuation in wake { continuation.resume() }
        subscribers.drain()
        loopSubscribers.drain()
    }

    /// Expires waiters at their deadlines and sends stream heartbeats until graceful shutdown,
    /// then wakes every waiter and ends every stream.
    package func run() async throws {
        await withGracefulShutdownHandler {
            await cancelWhenGracefulShutdown {
                await withDiscardingTaskGroup { group in
                    group.addTask { await self.deadlines.run(tick: .milliseconds(100)) { key in self.signal(key) } }
                    group.addTask { await self.subscribers.runHeartbeats(tick: .seconds(1)) }
                }
            }
        } onGracefulShutdown: {
            self.drain()
        }
    }
}
