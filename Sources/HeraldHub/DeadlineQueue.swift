internal import HeapModule
internal import Synchronization

/// Keys that come due at instants: a min-heap under a mutex, drained by one loop.
///
/// Used where many things wait for a time (held long polls, `delay` checks): one heap and
/// one sleeping loop instead of one sleeping task each. Removing a key early is not
/// supported; consumers ignore keys that are no longer relevant when they come due.
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
    }

    private let state = Mutex(State())

    package init() {}

    /// How many keys are waiting.
    package var count: Int { state.withLock { $0.heap.count } }

    /// Adds `key`, due at `deadline`.
    package func schedule(_ key: Key, at deadline: ContinuousClock.Instant) {
        state.withLock { state in
            state.sequence += 1
            state.heap.insert(Entry(deadline: deadline, sequence: state.sequence, key: key))
        }
    }

    /// Removes and returns every key due at or before `now`, earliest first.
    package func popDue(now: ContinuousClock.Instant) -> [Key] {
        state.withLock { state in
            var due: [Key] = []
            while let first = state.heap.min, first.deadline <= now {
                due.append(state.heap.removeMin().key)
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
