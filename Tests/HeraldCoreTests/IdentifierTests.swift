import Testing

@testable import HeraldCore

@Suite struct IdentifierTests {
    @Test func checkIDsAreRandomURLSafeAnd128Bits() {
        let ids = Set((0..<1000).map { _ in CheckID.random().rawValue })
        #expect(ids.count == 1000)
        for id in ids { #expect(CheckID(id) != nil && id.utf8.count == 22) }
    }

    @Test func noCheckIDStartsWithADashThatACommandLineWouldTakeForAnOption() {
        // One in 64 would, by chance: 10,000 ids miss it with probability 10^-68.
        #expect(!(0..<10_000).contains { _ in CheckID.random().rawValue.hasPrefix("-") })
        #expect(CheckID("-tLfknalnmFP9JEl2ZnE1A") != nil)  // ids made before stay valid
    }

    @Test(arguments: ["", "abc", "rE22zp4hZharey9mUf6kq/", "rE22zp4hZharey9mUf6kqQQ", "../../../etc/passwd"])
    func malformedCheckIDsAreRefused(text: String) {
        #expect(CheckID(text) == nil)
    }

    @Test(arguments: [
        ("orders", true), ("a:b.c-d_e@f", true), ("check:x", true), ("", false),
        ("has space", false), ("slash/no", false), (String(repeating: "a", count: 201), false),
    ])
    func channelNamesFollowTheContract(name: String, valid: Bool) {
        #expect((ChannelName(name) != nil) == valid)
    }

    @Test func base64URLMatchesRFC4648() {
        #expect(base64URL(Array("f".utf8)) == "Zg")
        #expect(base64URL(Array("fo".utf8)) == "Zm8")
        #expect(base64URL(Array("foo".utf8)) == "Zm9v")
        #expect(base64URL([0xfb, 0xff]) == "-_8")
    }

    @Test(arguments: [(String?.none, true), ("", true), ("k2f9", true), ("other", false)])
    func anEpochAcceptsNoneEmptyOrItself(claimed: String?, accepted: Bool) {
        #expect(Epoch("k2f9").accepts(claimed.map(Epoch.init)) == accepted)
    }

    @Test func timeOrderedTokensSortByTime() {
        let early = timeOrderedToken(at: Timestamp(millisecondsSince1970: 1_000))
        let late = timeOrderedToken(at: Timestamp(millisecondsSince1970: 1_764_028_800_000))
        #expect(early.hasPrefix("0000000003e8") && early.count == 28)
        #expect(early < late && late < timeOrderedToken(at: Timestamp(millisecondsSince1970: 1_764_028_800_001)))
        #expect(late != timeOrderedToken(at: Timestamp(millisecondsSince1970: 1_764_028_800_000)))
    }
}
