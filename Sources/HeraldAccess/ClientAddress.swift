#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`, or one address), for `trusted-proxies`.
package struct Network: Sendable, Hashable, CustomStringConvertible {
    private let bytes: [UInt8]
    private let prefix: Int
    package let description: String

    /// - Returns: nil unless `text` is an address, optionally with `/prefix` within its size.
    package init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard let first = parts.first, let bytes = Self.parse(first) else { return nil }
        let size = bytes.count * 8
        if parts.count == 2 {
            guard let prefix = Int(parts[1]), (0...size).contains(prefix) else { return nil }
            self.prefix = prefix
        } else {
            prefix = size
        }
        self.bytes = bytes
        description = String(text)
    }

    /// Whether `address` (an IP address's text) is in this network.
    package func contains(_ address: some StringProtocol) -> Bool {
        guard let other = Self.parse(address), other.count == bytes.count else { return false }
        var remaining = prefix
        for index in bytes.indices where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if bytes[index] & mask != other[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// The address's bytes (4 or 16), or nil when it is not an address.
    static func parse(_ text: some StringProtocol) -> [UInt8]? {
        let text = String(text)
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

/// Who a client is for limits: its address, or the one a trusted proxy says it forwards for.
package struct ClientAddresses: Sendable {
    /// `trusted-proxies`.
    package var trustedProxies: [Network]

    package init(trustedProxies: [Network] = []) { self.trustedProxies = trustedProxies }

    package func isTrusted(_ address: String) -> Bool { trustedProxies.contains { $0.contains(address) } }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the
    /// right-most address of `X-Forwarded-For` that is not itself a trusted proxy (the ones
    /// left of it are whatever the client wrote, and are not believed).
    package func client(peer: String?, forwardedFor: String?) -> String? {
        guard let peer, isTrusted(peer), let forwardedFor else { return peer }
        let hops = forwardedFor.split(separator: ",").map {
            String($0.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
        }
        for hop in hops.reversed() where Network.parse(hop) != nil {
            if !isTrusted(hop) { return hop }
        }
        return peer
    }
}
