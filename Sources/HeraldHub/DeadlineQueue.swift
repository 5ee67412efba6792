internal import HeapModule
internal import Synchronization

/// Keys that come due at instants: a min-heap under a mutex, drained by one loop.
///
/// Used where many things wait for a time (held long polls, `delay` checks): one heap and
/// one sleeping loop instead of one sleeping task each. A key removed early (an `external`
/// check completed long before its timeout) is only marked; the heap is rebuilt without the
/// marked keys once they are half of it, so it holds at most twice what still waits.
/// Consumers still ignore keys that are no longer relevant when they come due.
package final class DeadlineQueue<Key: Hashable & Sendable>: Sendable {
    private struct Entry: Comparable, Sendable {
        var deadline: ContinuousClock.Instant
        var sequence: UInt64
        var key: Key
        static func < (lhs: Entry, rhs: Entry) -> Bool {
            (lhs.deadline, lhs.sequence) < (rhs.deadline, rhs.sequence)
        }
        static func == (lhs: Entry, rhs: Entry) -> Bool { lhs.sequence == rhs.sequence }
    }

    private struct State {
        var heap = Heap<Entry>()
        var sequence: UInt64 = 0
        /// Keys removed early whose entries are still in the heap.
        var removed: Set<Key> = []
    }

    private let state = Mutex(State())

    package init() {}

    /// How many keys are waiting (at most; see ``remove(_:)``).
    package var count: Int { state.withLock { max($0.heap.count - $0.removed.count, 0) } }

    /// Entries the heap holds, waiting or removed but not yet dropped.
    package var storage: Int { state.withLock { $0.heap.count } }

    /// Adds `key`, due at `deadline`.
    package func schedule(_ key: Key, at deadline: ContinuousClock.Instant) {
        state.withLock { state in
            state.sequence += 1
            state.removed.remove(key)
            state.heap.insert(Entry(deadline: deadline, sequence: state.sequence, key: key))
        }
    }

    /// Removes `key` before it comes due. A key that is not waiting is dropped at the next
    /// rebuild; until then ``count`` may be low by it.
    package func remove(_ key: Key) {
        state.withLock { state in
            state.removed.insert(key)
            if state.removed.count * 2 >= state.heap.count {
                let removed = state.removed
                state.heap = Heap(state.heap.unordered.filter { !removed.contains($0.key) })
                state.removed = []
            }
        }
    }

    /// Removes and returns every key due at or before `now`, earliest first.
    package func popDue(now: ContinuousClock.Instant) -> [Key] {
        state.withLock { state in
            var due: [Key] = []
            while let first = state.heap.min, first.deadline <= now {
                let key = state.heap.removeMin().key
                if state.removed.remove(key) == nil { due.append(key) }
            }
            return due
        }
    }

    /// The earliest deadline, if any.
    package var nextDeadline: ContinuousClock.Instant? { state.withLock { $0.heap.min?.deadline } }

    /// Calls `fire` for each key as it comes due, until the task is cancelled.
    ///
    /// Sleeps until the earliest deadline, but never longer than `tick`, so a key scheduled
    /// earlier than the current sleep is fired at most `tick` late.
    package func run(tick: Duration, fire: (Key) async -> Void) async {
        let clock = ContinuousClock()
        while !Task.isCancelled {
            for key in popDue(now: clock.now) { await fire(key) }
            let wake = min(nextDeadline ?? clock.now.advanced(by: tick), clock.now.advanced(by: tick))
            try? await clock.sleep(until: wake, tolerance: .milliseconds(1))
        }
    }
}
