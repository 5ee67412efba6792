import HeraldCore
import HeraldHooks
import HeraldStore
import Testing

@Suite struct WebhookSignerTests {
    /// The example of the Standard Webhooks specification.
    @Test func signsLikeTheStandardWebhooksExample() {
        let signature = WebhookSigner.signature(
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
            timestamp: 1_614_265_330,
            body: #"{"test": 2432232314}"#
        )
        #expect(signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    }

    @Test func refusesASecretWithoutItsPrefix() {
        #expect(
            WebhookSigner.signature(secret: "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", id: "m", timestamp: 1, body: "") == nil
        )
    }

    @Test func eventPatterns() {
        #expect(Subscription.pattern("*", matches: "check.done"))
        #expect(Subscription.pattern("check.*", matches: "check.done"))
        #expect(!Subscription.pattern("check.*", matches: "checkout.done"))
        #expect(Subscription.pattern("check.done", matches: "check.done"))
        #expect(!Subscription.pattern("check.done", matches: "check.failed"))
    }
}

@Suite struct RotationSignatureTests {
    @Test func twoSecretsGiveTwoSpaceSeparatedSignatures() throws {
        let (old, new) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", WebhookSecret.generate())
        let both = try #require(WebhookSigner.signature(secrets: [new, old], id: "m", timestamp: 1, body: "{}"))
        let parts = both.split(separator: " ").map(String.init)
        #expect(parts.count == 2)
        #expect(parts[0] == WebhookSigner.signature(secret: new, id: "m", timestamp: 1, body: "{}"))
        #expect(parts[1] == WebhookSigner.signature(secret: old, id: "m", timestamp: 1, body: "{}"))
        #expect(WebhookSigner.signature(secrets: [], id: "m", timestamp: 1, body: "{}") == nil)
    }
}
