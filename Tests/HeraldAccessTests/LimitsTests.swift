import HeraldCore
import Testing

@testable import HeraldAccess

@Suite struct RateLimiterTests {
    @Test func aBurstOfTwiceTheRateThenOneTokenPerInterval() {
        let limiter = RateLimiter(perSecond: 2)
        let start = ContinuousClock.now
        for _ in 0..<4 { #expect(limiter.take("a", now: start) == nil) }
        #expect(limiter.take("a", now: start) == .seconds(1))
        #expect(limiter.take("b", now: start) == nil)  // another client has its own bucket
        #expect(limiter.take("a", now: start.advanced(by: .milliseconds(500))) == nil)
        #expect(limiter.take("a", now: start.advanced(by: .milliseconds(500))) != nil)
    }

    @Test func memoryIsBoundedByDroppingIdleClients() {
        let limiter = RateLimiter(perSecond: 1, maxClients: 100)
        let start = ContinuousClock.now
        for n in 0..<100 { _ = limiter.take("client\(n)", now: start) }
        #expect(limiter.count == 100)
        // Ten seconds later every bucket has refilled: a new client drops them.
        _ = limiter.take("new", now: start.advanced(by: .seconds(10)))
        #expect(limiter.count == 1)
        // Busy clients are forgiven rather than let the map grow.
        for n in 0..<300 { _ = limiter.take("busy\(n)", now: start.advanced(by: .seconds(10))) }
        #expect(limiter.count <= 100)
    }

    @Test func theServerKeyIsNeverLimitedAndATokenCountsBySubject() throws {
        let limits = ClientLimits(rates: [.creates: 0.5])
        for _ in 0..<5 { try limits.take(.creates, by: .server(key: "k"), address: "10.0.0.1") }
        let alice = Principal.client(ClientGrant(subject: "alice", expires: .now()))
        try limits.take(.creates, by: alice, address: "10.0.0.1")
        #expect(throws: HeraldError.self) { try limits.take(.creates, by: alice, address: "10.0.0.2") }
        try limits.take(.creates, by: .anonymous, address: "10.0.0.1")  // the address is another client
        do {
            try limits.take(.creates, by: .anonymous, address: "10.0.0.1")
            Issue.record("a second create within two seconds passed")
        } catch {
            #expect(error.code == .rateLimited && error.retryAfter == 2)
        }
        try ClientLimits().take(.publishes, by: .anonymous, address: nil)  // off
    }
}

@Suite struct ClientAddressTests {
    @Test func networksMatchByPrefix() {
        #expect(Network("10.0.0.0/8")!.contains("10.200.3.4"))
        #expect(!Network("10.0.0.0/8")!.contains("11.0.0.1"))
        #expect(Network("192.168.1.7")!.contains("192.168.1.7"))
        #expect(!Network("192.168.1.7")!.contains("192.168.1.8"))
        #expect(Network("fd00::/8")!.contains("fd12::1"))
        #expect(!Network("fd00::/8")!.contains("10.0.0.1"))
        #expect(Network("10.0.0.0/33") == nil)
        #expect(Network("not-an-address") == nil)
    }

    @Test func onlyATrustedProxysForwardedForIsBelieved() {
        let addresses = ClientAddresses(trustedProxies: [Network("10.0.0.0/8")!])
        #expect(addresses.client(peer: "203.0.113.5", forwardedFor: "1.2.3.4") == "203.0.113.5")
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: "1.2.3.4") == "1.2.3.4")
        // The right-most hop that is not a proxy; what the client wrote left of it is not believed.
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: "6.6.6.6, 1.2.3.4, 10.0.0.9") == "1.2.3.4")
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: "garbage") == "10.0.0.2")
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: nil) == "10.0.0.2")
        // Hops with ports, as some proxies write them.
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: "6.6.6.6, 1.2.3.4:5555") == "1.2.3.4")
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: "[2001:db8::7]:443") == "2001:db8::7")
        // A hop that is no address ends the walk: what the client wrote left of it is not believed.
        #expect(addresses.client(peer: "10.0.0.2", forwardedFor: "6.6.6.6, junk, 10.0.0.3") == "10.0.0.3")
        // A dual-stack socket reports IPv4 peers mapped into IPv6.
        #expect(addresses.client(peer: "::ffff:10.0.0.2", forwardedFor: "1.2.3.4") == "1.2.3.4")
    }

    @Test func anIPv6ClientIsItsSlash64() {
        #expect(Network.clientKey("2001:db8:1:2:aaaa::1") == Network.clientKey("2001:db8:1:2:bbbb::9"))
        #expect(Network.clientKey("2001:db8:1:2::1") != Network.clientKey("2001:db8:1:3::1"))
        #expect(Network.clientKey("::ffff:192.0.2.1") == Network.clientKey("192.0.2.1"))
        #expect(Network.clientKey("192.0.2.1") != Network.clientKey("192.0.2.2"))
    }
}
