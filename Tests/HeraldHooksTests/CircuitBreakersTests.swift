import Testing

@testable import HeraldHooks

@Suite struct CircuitBreakersTests {
    private func breakers(threshold: Int = 3, perTarget: Int = 2) -> CircuitBreakers {
        var configuration = WebhookConfiguration()
        configuration.breakerThreshold = threshold
        configuration.breakerCooldown = .seconds(30)
        configuration.maxInFlightPerTarget = perTarget
        return CircuitBreakers(configuration: configuration)
    }

    @Test func capsDeliveriesInFlightPerTarget() {
        let breakers = breakers(perTarget: 2)
        let now = ContinuousClock.now
        #expect(breakers.acquire("a", now: now) == nil)
        #expect(breakers.acquire("a", now: now) == nil)
        #expect(breakers.acquire("a", now: now) != nil)
        #expect(breakers.acquire("b", now: now) == nil)  // another target is not held up
        breakers.release("a", succeeded: true, now: now)
        #expect(breakers.acquire("a", now: now) == nil)
    }

    @Test func opensAfterConsecutiveFailuresThenProbesOnceAndClosesOnSuccess() throws {
        let breakers = breakers(threshold: 3, perTarget: 10)
        let start = ContinuousClock.now
        for _ in 0..<3 {
            #expect(breakers.acquire("dead", now: start) == nil)
            breakers.release("dead", succeeded: false, now: start)
        }
        // Open: held for the cooldown.
        let wait = try #require(breakers.acquire("dead", now: start.advanced(by: .seconds(10))))
        #expect(wait == .seconds(20))
        // Half-open: one probe goes, the others wait for its answer.
        let later = start.advanced(by: .seconds(31))
        #expect(breakers.acquire("dead", now: later) == nil)
        #expect(breakers.acquire("dead", now: later) != nil)
        // A failed probe opens it again for a whole cooldown.
        breakers.release("dead", succeeded: false, now: later)
        #expect(breakers.acquire("dead", now: later.advanced(by: .seconds(29))) != nil)
        let probe = later.advanced(by: .seconds(31))
        #expect(breakers.acquire("dead", now: probe) == nil)
        // A successful probe closes it: everything flows again.
        breakers.release("dead", succeeded: true, now: probe)
        for _ in 0..<5 { #expect(breakers.acquire("dead", now: probe) == nil) }
    }

    @Test func aSuccessResetsTheRunOfFailures() {
        let breakers = breakers(threshold: 3, perTarget: 10)
        let now = ContinuousClock.now
        for succeeded in [false, false, true, false, false] {
            #expect(breakers.acquire("flaky", now: now) == nil)
            breakers.release("flaky", succeeded: succeeded, now: now)
        }
        #expect(breakers.acquire("flaky", now: now) == nil)
    }
}
