import Testing

@testable import HeraldHooks

@Suite struct CircuitBreakersTests {
    private func breakers(
        threshold: Int = 3,
        perTarget: Int = 2,
        total: Int = 1024,
        rate: Int = 100,
        at now: ContinuousClock.Instant = .now
    ) -> CircuitBreakers {
        var configuration = WebhookConfiguration()
        configuration.breakerThreshold = threshold
        configuration.breakerCooldown = .seconds(30)
        configuration.timeout = .seconds(15)
        configuration.maxInFlightPerTarget = perTarget
        configuration.maxInFlight = total
        configuration.suspectAttemptsPerSecond = rate
        return CircuitBreakers(configuration: configuration, now: now)
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
        // Suspects hold half the slots: the others park until one is given back, in order, for
        // twice as long as their turn may take (a timeout per round of slots, 10 ms per token).
        #expect(breakers.acquire("new", now: now) == .park(.milliseconds(32_020)))
        #expect(breakers.acquire("newer", now: now) == .park(.milliseconds(64_040)))
        #expect(breakers.acquire("new", now: now) == .park(.milliseconds(32_020)))  // still first in line
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

    @Test func suspectsStartAtTheTokenRateInTheOrderTheyCame() {
        let start = ContinuousClock.now
        // 20 per second: bursts of 2, then one every 50 ms.
        let breakers = breakers(rate: 20, at: start)
        #expect(breakers.acquire("a", now: start) == .send(suspect: true))
        #expect(breakers.acquire("b", now: start) == .send(suspect: true))
        #expect(breakers.acquire("c", now: start) == .park(.milliseconds(32_100)))
        #expect(breakers.acquire("d", now: start) == .park(.milliseconds(32_200)))
        #expect(breakers.admitWaiting(now: start) == ([], .milliseconds(50)))
        // A token later, the first in line is unparked and its slot kept: a newcomer with the
        // next token still queues behind the second.
        let later = start.advanced(by: .milliseconds(50))
        #expect(breakers.admitWaiting(now: later) == (["c"], .milliseconds(50)))
        #expect(breakers.acquire("e", now: later.advanced(by: .milliseconds(50))) == .park(.milliseconds(32_200)))
        #expect(breakers.acquire("c", now: later.advanced(by: .milliseconds(50))) == .send(suspect: true))
        #expect(breakers.admitWaiting(now: later.advanced(by: .milliseconds(50))) == (["d"], .milliseconds(50)))
        // Healthy targets take no token.
        _ = breakers.release("a", suspect: true, succeeded: true, now: later)
        for _ in 0..<2 { #expect(breakers.acquire("a", now: later) == .send(suspect: false)) }
    }

    @Test func aQueuedSuspectWaitsForASlotAsWellAsAToken() {
        let start = ContinuousClock.now
        let breakers = breakers(total: 2, rate: 1000, at: start)  // one slot for suspects
        #expect(breakers.acquire("a", now: start) == .send(suspect: true))
        #expect(breakers.acquire("b", now: start) == .park(.milliseconds(64_002)))
        // Tokens are there, the slot is not: nothing to wait for but a release.
        #expect(breakers.admitWaiting(now: start.advanced(by: .seconds(1))) == ([], nil))
        #expect(breakers.release("a", suspect: true, succeeded: false, now: start.advanced(by: .seconds(2))) == ["b"])
        // An admission not claimed within a while gives its slot back.
        #expect(breakers.acquire("c", now: start.advanced(by: .seconds(3))) == .park(.milliseconds(64_002)))
        #expect(breakers.admitWaiting(now: start.advanced(by: .seconds(8))) == (["c"], nil))
    }
}
