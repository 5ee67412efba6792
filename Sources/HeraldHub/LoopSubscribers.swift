package import HeraldCore
internal import NIOCore
internal import Synchronization

/// A streaming subscriber served on its connection's event loop: no task, no continuation.
///
/// Every call comes on `loop`, the loop it subscribed on. The hub never waits for one: a
/// subscriber writes what it receives and bounds itself by its channel's writability.
package protocol LoopSubscriber: AnyObject {
    /// Live events of its channel, in the order they were announced (concurrent publishers
    /// may announce out of order), everything that arrived since the last call.
    func receive(_ events: [EncodedEvent])
    /// Called about every ``LoopSubscribers/tick``: heartbeats and expiry.
    func tick(_ now: ContinuousClock.Instant)
    /// Live events of its channel were dropped (its loop fell too far behind): read what
    /// follows its position from the store.
    func resync()
    /// The server is shutting down: end.
    func drain()
    /// Whether it is a held poll: its first answer ends it, and its client asks again at once.
    /// A round hands these their events before the loop reads its sockets again (see
    /// ``LoopSubscribers``).
    var answersOnce: Bool { get }
}

/// Streaming subscribers grouped by event loop, so that an event costs one hop per loop that
/// follows its channel, not one per subscriber.
///
/// Publishing appends the shared ``EncodedEvent`` to the inbox of each loop following the
/// channel, under that loop's lock, and schedules the loop only when no round is scheduled or
/// under way there: a burst of events reaches a loop as one batch. On the loop, a round hands
/// the batch to each subscriber of each channel in it, 32 subscribers per loop task; events
/// announced meanwhile wait for the next round, and reach each subscriber together, in one
/// write. The subscribers write and flush. A loop's subscribers are touched only on that loop.
///
/// Between two slices of streaming subscribers (and of a tick, and between rounds) the loop
/// reads its sockets (`executeAfterPolling`; a slice queued with `execute` would keep the loop
/// deaf for the whole round): a publisher's next event is read and committed while a round
/// writes, and joins the next round (several events per write, not one), and a probe or a new
/// connection no longer waits for a whole round or tick of streams (as a rule: a slice that
/// comes due while the loop is busy with other tasks runs before the poll). Held polls are
/// handed their events first and back to back: each answer ends its poll and its client polls
/// again at once, and reading those polls in between would put them ahead of the answers
/// still owed.
final class LoopSubscribers: Sendable {
    /// How often each loop ticks its subscribers (heartbeats, expiries).
    static let tick = TimeAmount.milliseconds(250)
    /// Events a loop's inbox holds (8 B each, shared) before they are dropped and every
    /// subscriber of the loop reads from the store instead: publishers outran the loop.
    static let maxInbox = 65_536

    private let inboxLimit: Int

    init(inboxLimit: Int = LoopSubscribers.maxInbox) {
        self.inboxLimit = inboxLimit
    }

    /// One event loop's subscribers and inbox.
    private final class Shard: Sendable {
        /// What only the loop touches.
        final class Local {
            var subscribers: [ChannelName: [ObjectIdentifier: any LoopSubscriber]] = [:]
            /// A tick's slices are under way: the next tick is skipped rather than overlap it.
            var isTicking = false
        }

        /// Events announced and not yet handed to the loop's subscribers, and whether a round
        /// is scheduled or under way (then it takes them when it ends).
        struct Inbox {
            var events: [EncodedEvent] = []
            var isScheduled = false
            /// Events were dropped: the loop fell `inboxLimit` events behind its publishers.
            var overflowed = false
        }

        let loop: any EventLoop
        let local: NIOLoopBound<Local>
        let inbox = Mutex(Inbox())
        let inboxLimit: Int

        init(loop: any EventLoop, inboxLimit: Int) {
            self.loop = loop
            self.local = NIOLoopBound(Local(), eventLoop: loop)
            self.inboxLimit = inboxLimit
        }

        /// Adds `event` to the inbox; schedules a round unless one is scheduled or under way.
        func post(_ event: EncodedEvent) {
            let schedule = inbox.withLock { inbox in
                if inbox.events.count >= inboxLimit {
                    inbox.events = []
                    inbox.overflowed = true
                } else {
                    inbox.events.append(event)
                }
                defer { inbox.isScheduled = true }
                return !inbox.isScheduled
            }
            if schedule { loop.execute { self.round() } }
        }

        /// One round: everything in the inbox, grouped by channel in announcement order, handed
        /// to each subscriber of each channel, a slice of subscribers per loop task. Scheduled
        /// only by `post` and `roundEnded`, with something in the inbox; `roundEnded` alone
        /// clears `isScheduled`, so one chain of rounds runs per loop.
        func round() {
            let (events, overflowed) = inbox.withLock { inbox in
                defer {
                    inbox.events.removeAll(keepingCapacity: true)
                    inbox.overflowed = false
                }
                return (inbox.events, inbox.overflowed)
            }
            if overflowed {
                // Whatever was dropped is in the store: every subscriber reads after its position.
                for subscribers in local.value.subscribers.values {
                    for subscriber in subscribers.values { subscriber.resync() }
                }
            }
            guard !events.isEmpty else { return roundEnded() }
            var batches: [ChannelName: [EncodedEvent]] = [:]
            var order: [ChannelName] = []
            for event in events {
                if batches[event.event.channel] == nil { order.append(event.event.channel) }
                batches[event.event.channel, default: []].append(event)
            }
            let local = local.value
            var polls: [(any LoopSubscriber, [EncodedEvent])] = []
            var streams: [(any LoopSubscriber, [EncodedEvent])] = []
            for channel in order {
                guard let subscribers = local.subscribers[channel], let batch = batches[channel] else { continue }
                for subscriber in subscribers.values {
                    if subscriber.answersOnce {
                        polls.append((subscriber, batch))
                    } else {
                        streams.append((subscriber, batch))
                    }
                }
            }
            hand(NIOLoopBound(polls + streams, eventLoop: loop), from: 0)
        }

        /// Hands a slice of a round's work to its subscribers, then the next slice: at once if
        /// it starts with a held poll, else once the loop has polled its sockets. Events posted
        /// meanwhile wait for the next round, so every subscriber gets them after this round's.
        private func hand(_ work: NIOLoopBound<[(any LoopSubscriber, [EncodedEvent])]>, from start: Int) {
            let items = work.value
            let end = min(start + Self.slice, items.count)
            for index in start..<end { items[index].0.receive(items[index].1) }
            if end == items.count {
                roundEnded()
            } else if items[end].0.answersOnce {
                loop.execute { self.hand(work, from: end) }
            } else {
                loop.executeAfterPolling { self.hand(work, from: end) }
            }
        }

        /// The next round, once the loop has polled its sockets, if events came meanwhile.
        private func roundEnded() {
            let hasMore = inbox.withLock { inbox in
                let hasMore = !inbox.events.isEmpty || inbox.overflowed
                if !hasMore { inbox.isScheduled = false }
                return hasMore
            }
            if hasMore { loop.executeAfterPolling { self.round() } }
        }

        /// Subscribers handed a round's events per loop task.
        ///
        /// Smaller slices let the loop read more often during a round, so a publisher's next
        /// events are read and committed sooner and the next round carries more of them per
        /// write: more throughput, and each event waits longer for the round that carries it.
        /// Measured with 1,000 subscribers and a publisher as fast as it can (docs/benchmarks.md,
        /// 2026-12-08): SSE 817,000 msg/s at 8 (p99 43 ms), 557,000 at 16, 480,000 at 32 (p99
        /// 22 ms), 374,000 at 64 (p99 18 ms), 199,000 at 256.
        static let slice = 32

        /// Ticks every subscriber, a slice per loop task, polling the sockets in between:
        /// heartbeats fall due together for streams that opened together, and the loop's other
        /// work must not wait for them all.
        func tick() {
            let local = local.value
            guard !local.isTicking else { return }
            local.isTicking = true
            let now = ContinuousClock.now
            var all: [any LoopSubscriber] = []
            for subscribers in local.subscribers.values { all += subscribers.values }
            tick(NIOLoopBound(all, eventLoop: loop), now, from: 0)
        }

        private func tick(
            _ subscribers: NIOLoopBound<[any LoopSubscriber]>,
            _ now: ContinuousClock.Instant,
            from start: Int
        ) {
            let all = subscribers.value
            let end = min(start + Self.slice, all.count)
            for index in start..<end { all[index].tick(now) }
            if end < all.count {
                loop.executeAfterPolling { self.tick(subscribers, now, from: end) }
            } else {
                local.value.isTicking = false
            }
        }

        func drain() {
            for subscribers in local.value.subscribers.values {
                for subscriber in subscribers.values { subscriber.drain() }
            }
        }
    }

    private struct State {
        var shards: [ObjectIdentifier: Shard] = [:]
        /// For each followed channel, the loops that follow it and how many subscribers each has.
        var followers: [ChannelName: [ObjectIdentifier: Int]] = [:]
        var count = 0
        var isDraining = false
    }

    private let state = Mutex(State())

    var count: Int { state.withLock { $0.count } }

    func isSubscribed(_ channel: ChannelName) -> Bool {
        state.withLock { $0.followers[channel] != nil }
    }

    var channels: [ChannelName] { state.withLock { Array($0.followers.keys) } }

    /// Adds `subscriber` to `channel`; call on `loop`. Events announced from now on reach it.
    /// - Returns: false when the server is draining: the subscriber is not added.
    func subscribe(_ subscriber: any LoopSubscriber, to channel: ChannelName, on loop: any EventLoop) -> Bool {
        let key = ObjectIdentifier(loop)
        let (shard, isNew) = state.withLock { state -> (Shard?, Bool) in
            guard !state.isDraining else { return (nil, false) }
            let existing = state.shards[key]
            let shard = existing ?? Shard(loop: loop, inboxLimit: inboxLimit)
            state.shards[key] = shard
            state.followers[channel, default: [:]][key, default: 0] += 1
            state.count += 1
            return (shard, existing == nil)
        }
        guard let shard else { return false }
        shard.local.value.subscribers[channel, default: [:]][ObjectIdentifier(subscriber)] = subscriber
        if isNew {
            loop.scheduleRepeatedTask(initialDelay: Self.tick, delay: Self.tick) { _ in shard.tick() }
        }
        return true
    }

    /// Removes `subscriber`; call on `loop`. Removing one not subscribed does nothing.
    func unsubscribe(_ subscriber: any LoopSubscriber, from channel: ChannelName, on loop: any EventLoop) {
        let key = ObjectIdentifier(loop)
        guard let shard = state.withLock({ $0.shards[key] }) else { return }
        let local = shard.local.value
        guard local.subscribers[channel]?.removeValue(forKey: ObjectIdentifier(subscriber)) != nil else { return }
        if local.subscribers[channel]?.isEmpty == true { local.subscribers[channel] = nil }
        state.withLock { state in
            state.count -= 1
            let left = (state.followers[channel]?[key] ?? 1) - 1
            state.followers[channel]?[key] = left > 0 ? left : nil
            if state.followers[channel]?.isEmpty == true { state.followers[channel] = nil }
        }
    }

    /// Hands `event` to every loop that follows its channel; never waits.
    func deliver(_ event: EncodedEvent) {
        let shards = state.withLock { state -> [Shard] in
            guard let loops = state.followers[event.event.channel] else { return [] }
            return loops.keys.compactMap { state.shards[$0] }
        }
        for shard in shards { shard.post(event) }
    }

    /// Ends every subscriber, on its loop; later subscriptions are refused.
    func drain() {
        let shards = state.withLock { state in
            state.isDraining = true
            return Array(state.shards.values)
        }
        for shard in shards { shard.loop.execute { shard.drain() } }
    }
}
