import Foundation

/// A URL Herald will call (an `http` check, a webhook target), parsed and checked as text.
///
/// Only the text is checked here; the address it resolves to is checked by the runner's
/// resolver at connection time (see ``AddressPolicy``).
package struct TargetURL: Sendable, Hashable {
    package var scheme: String
    package var host: String
    package var port: Int
    /// Path and query, at least `/`.
    package var target: String

    package static let maxLength = 2048

    /// Parses an absolute `http` or `https` URL with a host and no credentials.
    package init(_ text: String, field: String = "url") throws(HeraldError) {
        guard text.utf8.count <= Self.maxLength else {
            throw .invalid("\(field) is longer than \(Self.maxLength) bytes")
        }
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw .invalid("\(field) is not an absolute URL")
        }
        guard scheme == "http" || scheme == "https" else {
            throw .invalid("\(field) must use http or https, not \(scheme)")
        }
        guard components.user == nil, components.password == nil else {
            throw .invalid("\(field) must not carry credentials")
        }
        guard var host = components.host, !host.isEmpty else { throw .invalid("\(field) has no host") }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard Self.isValidHost(host) else { throw .invalid("\(field) has an invalid host") }
        if let port = components.port, !(1...65535).contains(port) {
            throw .invalid("\(field) has an invalid port")
        }
        self.scheme = scheme
        self.host = host
        self.port = components.port ?? (scheme == "https" ? 443 : 80)
        let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        self.target = components.percentEncodedQuery.map { path + "?" + $0 } ?? path
    }

    /// Checks `text` as ``init(_:field:)`` does, discarding the result.
    package static func validate(_ text: String, field: String) throws(HeraldError) {
        _ = try TargetURL(text, field: field)
    }

    /// Whether `host` is an IP literal or a syntactically valid DNS name.
    package static func isValidHost(_ host: String) -> Bool {
        if IPAddress(host) != nil { return true }
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...253).contains(host.utf8.count), !labels.isEmpty else { return false }
        return labels.enumerated().allSatisfy { index, label in
            // A trailing dot (fully qualified name) leaves one empty last label.
            if label.isEmpty { return index == labels.count - 1 && index > 0 }
            return label.utf8.count <= 63 && label.first != "-" && label.last != "-"
                && label.utf8.allSatisfy { $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || isAlnum($0) }
        }
    }
}

private func isAlnum(_ byte: UInt8) -> Bool {
    (48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte)
}

/// An IPv4 or IPv6 address as bytes (4 or 16).
package struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    package let bytes: [UInt8]

    package init?(_ text: String) {
        var v4 = in_addr()
        var v6 = in6_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
        } else if inet_pton(AF_INET6, text, &v6) == 1 {
            bytes = withUnsafeBytes(of: &v6) { Array($0) }
        } else {
            return nil
        }
    }

    package init(bytes: [UInt8]) { self.bytes = bytes }

    package var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        return bytes.withUnsafeBytes { raw in
            inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
                ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
    }
}

/// Decides which addresses Herald may connect to on a client's behalf (the SSRF guard).
package enum AddressPolicy {
    /// Whether `address` is a public unicast address: not loopback, private, link-local,
    /// unique-local, carrier-grade NAT, multicast, reserved, documentation or cloud metadata.
    package static func isPublic(_ address: IPAddress) -> Bool {
        let b = address.bytes
        if b.count == 4 { return isPublicV4(b) }
        guard b.count == 16 else { return false }
        // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses carry an IPv4 one.
        if b[0..<10].allSatisfy({ $0 == 0 }) && ((b[10] == 0xff && b[11] == 0xff) || (b[10] == 0 && b[11] == 0)) {
            return isPublicV4(Array(b[12..<16]))
        }
        // NAT64 (64:ff9b::/96) maps IPv4 addresses too.
        if b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4..<12].allSatisfy({ $0 == 0 }) {
            return isPublicV4(Array(b[12..<16]))
        }
        if b[0] & 0xfe == 0xfc { return false }  // fc00::/7 unique local
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return false }  // fe80::/10 link-local
        if b[0] == 0xfe && b[1] & 0xc0 == 0xc0 { return false }  // fec0::/10 site-local (deprecated)
        if b[0] == 0xff { return false }  // multicast
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8 { return false }  // 2001:db8::/32 docs
        if b[0] == 0x20 && b[1] == 0x02 { return false }  // 6to4 can reach any IPv4 address
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0 { return false }  // Teredo
        if b.allSatisfy({ $0 == 0 }) || (b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1) { return false }
        return b[0] & 0xe0 == 0x20  // only 2000::/3 is global unicast
    }

    private static func isPublicV4(_ b: [UInt8]) -> Bool {
        switch (b[0], b[1]) {
        case (0, _), (10, _), (127, _): return false
        case (100, 64...127): return false  // carrier-grade NAT
        case (169, 254): return false  // link-local, cloud metadata 169.254.169.254
        case (172, 16...31), (192, 168): return false
        case (192, 0) where b[2] == 0 || b[2] == 2: return false  // IETF protocol, TEST-NET-1
        case (198, 18...19): return false  // benchmarking
        case (198, 51) where b[2] == 100: return false  // TEST-NET-2
        case (203, 0) where b[2] == 113: return false  // TEST-NET-3
        case (224...255, _): return false  // multicast, reserved, broadcast
        default: return true
        }
    }
}
