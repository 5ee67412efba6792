import HeraldCore
import HeraldStore
import Testing

@testable import HeraldHooks

/// What an attempt changes, decided without a store (the stores' conformance suite shows they
/// apply it).
@Suite struct WebhookPolicyTests {
    private let policy = WebhookPolicy(disableAfter: .seconds(60))
    private let start = Timestamp(millisecondsSince1970: 1_000_000)

    private func delivery(subscription: String? = "sub_a", check: String? = nil, attempts: Int = 0) -> Delivery {
        var delivery = Delivery(
            id: "msg_1",
            subscriptionID: subscription,
            checkID: check,
            targetURL: "https://a.test/",
            target: "https://a.test:443",
            secrets: ["whsec_x"],
            eventType: "t",
            payload: "{}",
            state: .pending,
            attempts: attempts,
            nextAttemptAt: start,
            createdAt: start,
            updatedAt: start
        )
        delivery.lease = 2
        return delivery
    }

    private func effects(
        _ outcome: DeliveryOutcome,
        at seconds: Int64 = 0,
        of delivery: Delivery? = nil,
        failingSince: Timestamp? = nil,
        isDisabled: Bool = false,
        lease: Int64? = 2
    ) -> [AttemptEffect] {
        let delivery = delivery ?? self.delivery()
        let attempt = DeliveryAttempt(
            at: start.adding(milliseconds: seconds * 1000),
            statusCode: 500,
            durationMilliseconds: 1,
            error: nil,
            snippet: nil
        )
        let health = delivery.subscriptionID.map { _ in
            SubscriptionHealth(failingSince: failingSince, isDisabled: isDisabled)
        }
        return policy.effects(
            of: AttemptRecord(deliveryID: delivery.id, attempt: attempt, outcome: outcome, lease: lease),
            on: AttemptSubject(delivery: delivery, subscription: health)
        )
    }

    @Test func aFirstFailureSchedulesTheRetryOpensTheWindowAndStartsARunOfFailures() {
        let retry = start.adding(milliseconds: 5000)
        #expect(
            effects(.retry(at: retry)) == [
                .settle(state: .pending, due: retry),
                .reopenFanOut(subscription: "sub_a"),
                .failing(subscription: "sub_a", since: start),
            ]
        )
        // A later attempt: the window was reopened by the first, the run keeps its start.
        #expect(
            effects(.retry(at: retry), at: 10, of: delivery(attempts: 1), failingSince: start) == [
                .settle(state: .pending, due: retry)
            ]
        )
    }

    @Test func aSuccessEndsTheRunOfFailures() {
        #expect(
            effects(.delivered, of: delivery(attempts: 3), failingSince: start) == [
                .settle(state: .delivered, due: nil),
                .failing(subscription: "sub_a", since: nil),
            ]
        )
    }

    @Test func aSubscriptionFailingLongerThanTheDisablePeriodIsDisabledOnce() {
        let failing = delivery(attempts: 4)
        #expect(!effects(.failed, at: 60, of: failing, failingSince: start).contains { $0.isDisable })
        #expect(
            effects(.failed, at: 61, of: failing, failingSince: start) == [
                .settle(state: .failed, due: nil),
                .disable(subscription: "sub_a", reason: .failing),
            ]
        )
        #expect(!effects(.failed, at: 61, of: failing, failingSince: start, isDisabled: true).contains { $0.isDisable })
    }

    @Test func anAttemptUnderAnOlderLeaseChangesTheDeliveryOnlyBySucceeding() {
        #expect(effects(.failed, lease: 1).isEmpty)
        #expect(effects(.delivered, lease: 1).first == .settle(state: .delivered, due: nil))
        var done = delivery()
        done.state = .delivered
        #expect(effects(.failed, of: done).isEmpty)
    }

    @Test func goneDeletesTheSubscriptionOrStopsTheChecksCallbacks() {
        #expect(effects(.gone, of: delivery(attempts: 1)).last == .delete(subscription: "sub_a"))
        #expect(
            effects(.gone, of: delivery(subscription: nil, check: "chk_1")) == [
                .settle(state: .failed, due: nil), .stopCallbacks(check: "chk_1"),
            ]
        )
    }
}

extension AttemptEffect {
    fileprivate var isDisable: Bool {
        if case .disable = self { return true }
        return false
    }
}
