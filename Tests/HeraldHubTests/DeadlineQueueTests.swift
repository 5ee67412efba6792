import Testing

@testable import HeraldHub

@Suite struct DeadlineQueueTests {
    @Test func aRemovedKeyNeverComesDue() {
        let queue = DeadlineQueue<Int>()
        let now = ContinuousClock.now
        for key in 0..<10 { queue.schedule(key, at: now.advanced(by: .seconds(key))) }
        queue.remove(3)
        queue.remove(7)
        #expect(queue.popDue(now: now.advanced(by: .seconds(100))) == [0, 1, 2, 4, 5, 6, 8, 9])
        #expect(queue.count == 0)
    }

    @Test func theHeapHoldsAtMostTwiceWhatStillWaits() {
        let queue = DeadlineQueue<Int>()
        let later = ContinuousClock.now.advanced(by: .seconds(86_400))
        for key in 0..<10_000 { queue.schedule(key, at: later) }
        for key in 0..<9_990 {
            queue.remove(key)
            #expect(queue.storage <= 2 * (10_000 - key - 1) + 1)
        }
        #expect(queue.count == 10)
        #expect(queue.popDue(now: later) == Array(9_990..<10_000))
    }

    @Test func aKeyScheduledAgainAfterItsRemovalComesDue() {
        let queue = DeadlineQueue<String>()
        let now = ContinuousClock.now
        queue.schedule("a", at: now)
        queue.schedule("b", at: now)
        queue.schedule("c", at: now)
        queue.remove("a")
        queue.schedule("a", at: now.advanced(by: .seconds(1)))
        #expect(Set(queue.popDue(now: now.advanced(by: .seconds(2)))).isSuperset(of: ["a", "b", "c"]))
    }
}
