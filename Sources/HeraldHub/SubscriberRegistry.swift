internal import DequeModule
package import HeraldCore
internal import Synchronization

/// Bounds of one streaming subscriber's queue.
package struct SubscriberLimits: Sendable, Hashable {
    /// Events queued for one subscriber before it counts as too slow (`stream-max-queued-events`,
    /// default 1024).
    package var maxQueuedEvents: Int
    /// Bytes of encoded events queued for one subscriber (`stream-max-queued-bytes`, default
    /// 1 MiB). With 10,000 subscribers that is a worst case of 10 GiB only if every one of them
    /// stalls with a full queue at once; a typical queue holds a few events between writes.
    package var maxQueuedBytes: Int

    package init(maxQueuedEvents: Int = 1024, maxQueuedBytes: Int = 1 << 20) {
        self.maxQueuedEvents = maxQueuedEvents
        self.maxQueuedBytes = maxQueuedBytes
    }
}

/// What a streaming subscriber gets next.
package enum Delivery: Sendable {
    /// New events of the channel, oldest first: everything queued since the last call, so a
    /// stream writes them in one write.
    case events([EncodedEvent])
    /// Nothing happened for the heartbeat interval.
    case heartbeat
    /// The subscriber fell behind its bounds; its queue was dropped. The stream must end with
    /// its resume point, and the client resumes from the store.
    case slowConsumer
    /// The server is shutting down, or the subscriber's task was cancelled: end the stream.
    case ended
}

/// Streaming subscribers per channel, each with a bounded queue; fed by ``Hub/publish(_:)``.
///
/// Publishing never waits for a subscriber: it appends the shared ``EncodedEvent`` to each
/// queue under the lock and resumes a parked consumer after unlocking. A queue that would
/// pass its bounds is dropped and the subscriber told it is a ``Delivery/slowConsumer``,
/// except on a `check:` channel, where the queue is coalesced to the latest event (the
/// check's newest state), which is all such a client needs.
final class SubscriberRegistry: Sendable {
    struct Key: Hashable, Sendable {
        var channel: ChannelName
        var id: UInt64
    }

    private struct Entry {
        var queue = Deque<EncodedEvent>()
        var bytes = 0
        var isOverflowed = false
        var parked: CheckedContinuation<Delivery, Never>?
        var heartbeatDue: ContinuousClock.Instant?
    }

    private struct State {
        var channels: [ChannelName: [UInt64: Entry]] = [:]
        var nextID: UInt64 = 0
        var count = 0
        var isDraining = false
    }

    private let limits: SubscriberLimits
    private let state = Mutex(State())

    init(limits: SubscriberLimits) {
        self.limits = limits
    }

    var count: Int { state.withLock { $0.count } }

    /// Whether a stream follows `channel`.
    func isSubscribed(_ channel: ChannelName) -> Bool {
        state.withLock { $0.channels[channel] != nil }
    }

    /// The channels streams follow.
    var channels: [ChannelName] { state.withLock { Array($0.channels.keys) } }

    func subscribe(_ channel: ChannelName) -> Key {
        state.withLock { state in
            state.nextID += 1
            state.count += 1
            state.channels[channel, default: [:]][state.nextID] = Entry()
            return Key(channel: channel, id: state.nextID)
        }
    }

    func unsubscribe(_ key: Key) {
        let parked = state.withLock { state -> CheckedContinuation<Delivery, Never>? in
            guard let entry = state.channels[key.channel]?.removeValue(forKey: key.id) else { return nil }
            state.count -= 1
            if state.channels[key.channel]?.isEmpty == true { state.channels[key.channel] = nil }
            return entry.parked
        }
        parked?.resume(returning: .ended)
    }

    func deliver(_ event: EncodedEvent) {
        let size = event.json.utf8.count
        let wake = state.withLock { state -> [(CheckedContinuation<Delivery, Never>, Delivery)] in
            guard var channel = state.channels[event.event.channel] else { return [] }
            var wake: [(CheckedContinuation<Delivery, Never>, Delivery)] = []
            for (id, var entry) in channel where !entry.isOverflowed {
                if entry.queue.count >= limits.maxQueuedEvents || entry.bytes + size > limits.maxQueuedBytes {
                    entry.queue.removeAll()
                    entry.bytes = 0
                    // A check's client needs only its newest state; any other must resume from the store.
                    entry.isOverflowed = !event.event.channel.isCheckChannel
                }
                if !entry.isOverflowed {
                    entry.queue.append(event)
                    entry.bytes += size
                }
                if let parked = entry.parked {
                    entry.parked = nil
                    wake.append((parked, Self.take(&entry)))
                }
                channel[id] = entry
            }
            state.channels[event.event.channel] = channel
            return wake
        }
        for (continuation, delivery) in wake { continuation.resume(returning: delivery) }
    }

    /// The next delivery for `key`; parks until there is one, or until `heartbeat` passed.
    func next(_ key: Key, heartbeat: Duration) async -> Delivery {
        let due = ContinuousClock.now.advanced(by: heartbeat)
        let delivery = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Delivery, Never>) in
                let ready = state.withLock { state -> Delivery? in
                    guard !state.isDraining, !Task.isCancelled, var entry = state.channels[key.channel]?[key.id]
                    else { return .ended }
                    if entry.isOverflowed || !entry.queue.isEmpty {
                        let delivery = Self.take(&entry)
                        state.channels[key.channel]?[key.id] = entry
                        return delivery
                    }
                    entry.parked = continuation
                    entry.heartbeatDue = due
                    state.channels[key.channel]?[key.id] = entry
                    return nil
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            wake(key, with: .ended)
        }
        return delivery
    }

    /// Everything queued (or the overflow) for one entry; the caller resumes it.
    private static func take(_ entry: inout Entry) -> Delivery {
        if entry.isOverflowed { return .slowConsumer }
        let batch = Array(entry.queue)
        entry.queue.removeAll(keepingCapacity: true)
        entry.bytes = 0
        return .events(batch)
    }

    private func wake(_ key: Key, with delivery: Delivery) {
        let parked = state.withLock { state -> CheckedContinuation<Delivery, Never>? in
            let parked = state.channels[key.channel]?[key.id]?.parked
            state.channels[key.channel]?[key.id]?.parked = nil
            return parked
        }
        parked?.resume(returning: delivery)
    }

    /// Ends every stream: each parked consumer gets ``Delivery/ended``, and later calls too.
    func drain() {
        let parked = state.withLock { state -> [CheckedContinuation<Delivery, Never>] in
            state.isDraining = true
            var parked: [CheckedContinuation<Delivery, Never>] = []
            for (channel, entries) in state.channels {
                for (id, entry) in entries {
                    if let continuation = entry.parked { parked.append(continuation) }
                    state.channels[channel]?[id]?.parked = nil
                }
            }
            return parked
        }
        for continuation in parked { continuation.resume(returning: .ended) }
    }

    /// Sends heartbeats to parked subscribers whose interval passed, until cancelled.
    func runHeartbeats(tick: Duration) async {
        let clock = ContinuousClock()
        while !Task.isCancelled {
            let now = clock.now
            let due = state.withLock { state -> [CheckedContinuation<Delivery, Never>] in
                var due: [CheckedContinuation<Delivery, Never>] = []
                for (channel, entries) in state.channels {
                    for (id, entry) in entries {
                        if let parked = entry.parked, let at = entry.heartbeatDue, at <= now {
                            due.append(parked)
                            state.channels[channel]?[id]?.parked = nil
                        }
                    }
                }
                return due
            }
            for continuation in due { continuation.resume(returning: .heartbeat) }
            try? await clock.sleep(for: tick)
        }
    }
}
