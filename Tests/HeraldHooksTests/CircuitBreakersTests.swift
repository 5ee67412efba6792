import Testing

@testable import HeraldHooks

@Suite struct CircuitBreakersTests {
    private func breakers(threshold: Int = 3, perTarget: Int = 2, total: Int = 1024) -> CircuitBreakers {
        var configuration = WebhookConfiguration()
        configuration.breakerThreshold = threshold
        configuration.breakerCooldown = .seconds(30)
        configuration.timeout = .seconds(15)
        configuration.maxInFlightPerTarget = perTarget
        configuration.maxInFlight = total
        return CircuitBreakers(configuration: configuration)
    }

    /// Sends one delivery to `target` and gives its slot back with `succeeded`.
    private func attempt(
        _ breakers: CircuitBreakers,
        _ target: String,
        succeeded: Bool,
        at now: ContinuousClock.Instant
    ) {
        guard case .send(let suspect) = breakers.acquire(target, now: now) else {
            Issue.record("expected a slot for \(target)")
            return
        }
        _ = breakers.release(target, suspect: suspect, succeeded: succeeded, now: now)
    }

    @Test func aNewTargetGetsOneSlotUntilItSucceedsThenItsCap() {
        let breakers = breakers(perTarget: 2)
        let now = ContinuousClock.now
        #expect(breakers.acquire("a", now: now) == .send(suspect: true))
        // The backlog waits for the first attempt, as long as it may take, and goes when it ends.
        #expect(breakers.acquire("a", now: now) == .park(.seconds(16)))
        #expect(breakers.acquire("b", now: now) == .send(suspect: true))  // another target is not held up
        #expect(breakers.release("a", suspect: true, succeeded: true, now: now) == ["a"])
        #expect(breakers.acquire("a", now: now) == .send(suspect: false))
        #expect(breakers.acquire("a", now: now) == .send(suspect: false))
        #expect(breakers.acquire("a", now: now) == .wait(.milliseconds(50)))
    }

    @Test func targetsNotKnownHealthyShareHalfOfAllSlots() {
        let breakers = breakers(threshold: 100, perTarget: 8, total: 4)
        let now = ContinuousClock.now
        attempt(breakers, "healthy", succeeded: true, at: now)
        for target in ["x", "y"] { attempt(breakers, target, succeeded: false, at: now) }
        #expect(breakers.acquire("x", now: now) == .send(suspect: true))
        #expect(breakers.acquire("x", now: now) == .park(.seconds(16)))  // behind an attempt that may hang
        #expect(breakers.acquire("y", now: now) == .send(suspect: true))
        // Suspects hold half the slots: the others park until one is given back, in order.
        #expect(breakers.acquire("new", now: now) == .park(.seconds(16)))
        #expect(breakers.acquire("newer", now: now) == .park(.seconds(16)))
        #expect(breakers.acquire("new", now: now) == .park(.seconds(16)))  // still first in line
        #expect(breakers.acquire("healthy", now: now) == .send(suspect: false))  // the other half is free
        #expect(breakers.release("x", suspect: true, succeeded: true, now: now) == ["new", "x"])
        #expect(breakers.acquire("new", now: now) == .send(suspect: true))
        #expect(breakers.release("y", suspect: true, succeeded: false, now: now) == ["newer"])
        #expect(breakers.acquire("x", now: now) == .send(suspect: false))  // healthy again
    }

    @Test func opensAfterConsecutiveFailuresThenProbesOnceAndClosesOnSuccess() {
        let breakers = breakers(threshold: 3, perTarget: 10)
        let start = ContinuousClock.now
        for _ in 0..<3 { attempt(breakers, "dead", succeeded: false, at: start) }
        // Open: held for the cooldown.
        #expect(breakers.acquire("dead", now: start.advanced(by: .seconds(10))) == .park(.seconds(20)))
        // Half-open: one probe goes, the others wait for its answer.
        let later = start.advanced(by: .seconds(31))
        #expect(breakers.acquire("dead", now: later) == .send(suspect: true))
        #expect(breakers.acquire("dead", now: later) == .park(.seconds(16)))
        // A failed probe opens it again for a whole cooldown: its backlog stays parked.
        #expect(breakers.release("dead", suspect: true, succeeded: false, now: later).isEmpty)
        #expect(breakers.acquire("dead", now: later.advanced(by: .seconds(29))) == .park(.seconds(1)))
        let probe = later.advanced(by: .seconds(31))
        #expect(breakers.acquire("dead", now: probe) == .send(suspect: true))
        // A successful probe closes it: everything flows again.
        _ = breakers.release("dead", suspect: true, succeeded: true, now: probe)
        for _ in 0..<5 { #expect(breakers.acquire("dead", now: probe) == .send(suspect: false)) }
    }

    @Test func aSuccessResetsTheRunOfFailures() {
        let breakers = breakers(threshold: 3, perTarget: 10)
        let now = ContinuousClock.now
        for succeeded in [false, false, true, false, false] {
            attempt(breakers, "flaky", succeeded: succeeded, at: now)
        }
        #expect(breakers.acquire("flaky", now: now) == .send(suspect: true))
    }
}
