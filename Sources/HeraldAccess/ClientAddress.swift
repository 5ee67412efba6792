internal import Foundation

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

    /// The address's bytes (4 or 16; an IPv4-mapped IPv6 address, as a dual-stack socket
    /// reports IPv4 peers, as its 4), or nil when it is not an address.
    static func parse(_ text: some StringProtocol) -> [UInt8]? {
        let text = String(text)
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, text, &v6) == 1 else { return nil }
        let bytes = withUnsafeBytes(of: &v6) { Array($0) }
        let mapped = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xFF && bytes[11] == 0xFF
        return mapped ? Array(bytes[12...]) : bytes
    }

    /// A forwarded hop's address: `1.2.3.4`, `1.2.3.4:5555`, `[2001:db8::1]:5555` or an IPv6
    /// address; nil when it is none of these.
    static func hop(_ text: some StringProtocol) -> String? {
        let text = String(text)
        if parse(text) != nil { return text }
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            let inner = String(text[text.index(after: text.startIndex)..<close])
            return parse(inner) != nil ? inner : nil
        }
        if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            let host = String(text[..<colon])
            return parse(host) != nil && Int(text[text.index(after: colon)...]) != nil ? host : nil
        }
        return nil
    }

    /// What limits count one client by: an IPv4 address, or an IPv6 address's /64 (one
    /// subscriber's usual allocation: otherwise a single host could be 2^64 clients).
    package static func clientKey(_ address: String) -> String {
        guard let bytes = parse(address) else { return address }
        guard bytes.count == 16 else { return bytes.map(String.init).joined(separator: ".") }
        return bytes[0..<8].map { String($0, radix: 16) }.joined(separator: ":") + "::/64"
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
    /// left of it are whatever the client wrote, and are not believed). A hop that is not an
    /// address ends the walk at the last proxy passed: nothing left of it is believed either.
    package func client(peer: String?, forwardedFor: String?) -> String? {
        guard let peer, isTrusted(peer), let forwardedFor else { return peer }
        var closest = peer
        for text in forwardedFor.split(separator: ",").reversed() {
            guard let hop = Network.hop(text.trimmingCharacters(in: .whitespaces)) else { return closest }
            if !isTrusted(hop) { return hop }
            closest = hop
        }
        return closest
    }
}
