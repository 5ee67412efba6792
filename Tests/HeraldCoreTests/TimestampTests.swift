import Testing

@testable import HeraldCore

@Suite struct TimestampTests {
    @Test(arguments: [
        (Int64(0), "1970-01-01T00:00:00.000Z"),
        (1_795_546_800_300, "2026-11-24T19:00:00.300Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ])
    func writesRFC3339InUTCWithMilliseconds(milliseconds: Int64, text: String) {
        #expect(Timestamp(millisecondsSince1970: milliseconds).rfc3339 == text)
        #expect(Timestamp(rfc3339: text)?.millisecondsSince1970 == milliseconds)
    }

    @Test func parsesOffsetsAndShortFractions() {
        #expect(Timestamp(rfc3339: "2026-11-24T20:00:00.3+01:00")?.rfc3339 == "2026-11-24T19:00:00.300Z")
        #expect(Timestamp(rfc3339: "2026-11-24T19:00:00Z")?.rfc3339 == "2026-11-24T19:00:00.000Z")
        #expect(Timestamp(rfc3339: "2026-11-24T19:00:00.123456Z")?.rfc3339 == "2026-11-24T19:00:00.123Z")
    }

    @Test(arguments: ["", "yesterday", "2026-13-01T00:00:00Z", "2026-11-24 19:00:00Z", "2026-11-24T19:00:00"])
    func rejectsWhatIsNotRFC3339(text: String) {
        #expect(Timestamp(rfc3339: text) == nil)
    }
}
