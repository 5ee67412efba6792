import HTTPTypes
import HeraldCore
import HeraldStore
import Testing

@testable import HeraldHTTP

@Suite struct ProblemTests {
    @Test(arguments: [
        (HeraldError.Code.malformed, 400), (.invalid, 422), (.notFound, 404), (.conflict, 409), (.unauthorized, 401),
        (.tooLarge, 413), (.unsupportedMediaType, 415), (.overloaded, 429), (.unavailable, 503), (.internal, 500),
    ])
    func everyErrorCodeHasOneStatus(code: HeraldError.Code, status: Int) {
        #expect(Problem.status(for: code).code == status)
    }

    @Test func aProblemIsAnRFC9457Document() {
        let problem = Problem(HeraldError.invalid("params.ms must be an integer in 0...600000"))
        #expect(
            problem.json
                == #"{"type":"urn:herald:problem:invalid","title":"Unprocessable Content","status":422,"#
                + #""detail":"params.ms must be an integer in 0...600000","code":"invalid"}"#
        )
    }

    @Test func overloadAndAuthenticationCarryTheirHeaders() {
        #expect(Problem(HeraldError(.overloaded, "full")).headers[.retryAfter] == "1")
        #expect(Problem(HeraldError(.unauthorized, "no key")).headers[.wwwAuthenticate] != nil)
    }

    @Test(arguments: [
        ("\"3\"", Int64?(3)), ("W/\"12\"", 12), ("\"4\", \"5\"", 4), ("3", nil), ("\"x\"", nil), ("", nil),
    ])
    func etagsAreReadStrictly(value: String, version: Int64?) {
        #expect(HeraldAPI.version(fromETag: value) == version)
    }

    @Test func idempotencyFingerprintsAreStableAndDistinguishBodies() throws {
        func key(_ kind: String, _ text: String = "k") throws -> IdempotencyKey {
            try IdempotencyKey(validating: text, field: "Idempotency-Key", body: .object(["kind": .string(kind)]))
        }
        #expect(try key("delay").fingerprint == key("delay").fingerprint)
        #expect(try key("delay").fingerprint != key("external").fingerprint)
        #expect(throws: HeraldError.self) { try key("delay", "has space") }
        #expect(throws: HeraldError.self) { try key("delay", "") }
    }
}
