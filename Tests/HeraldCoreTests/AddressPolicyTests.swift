import Testing

@testable import HeraldCore

@Suite struct AddressPolicyTests {
    @Test(arguments: [
        ("93.184.216.34", true), ("8.8.8.8", true), ("2606:4700:4700::1111", true),
        ("127.0.0.1", false), ("127.1.2.3", false), ("10.0.0.1", false), ("172.16.0.1", false),
        ("172.31.255.255", false), ("192.168.1.1", false), ("169.254.169.254", false), ("100.64.0.1", false),
        ("0.0.0.0", false), ("224.0.0.1", false), ("255.255.255.255", false), ("::1", false), ("::", false),
        ("fe80::1", false), ("fd00::1", false), ("fc00::1", false), ("::ffff:127.0.0.1", false),
        ("::ffff:10.1.2.3", false), ("64:ff9b::a9fe:a9fe", false), ("ff02::1", false), ("2001:db8::1", false),
        ("::ffff:8.8.8.8", true), ("172.32.0.1", true),
    ])
    func onlyPublicUnicastAddressesAreAllowed(address: String, isPublic: Bool) throws {
        let parsed = try #require(IPAddress(address))
        #expect(AddressPolicy.isPublic(parsed) == isPublic)
    }

    @Test func targetURLsAreParsedStrictly() throws {
        let url = try TargetURL("https://Example.com:8443/a/b?c=d")
        #expect(url.host == "Example.com" && url.port == 8443 && url.target == "/a/b?c=d" && url.scheme == "https")
        #expect(try TargetURL("http://[::1]/").host == "::1")
        #expect(throws: HeraldError.self) { try TargetURL("http:///nohost") }
    }
}
