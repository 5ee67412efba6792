internal import Foundation
package import HeraldCore
internal import NIOPosix

/// Resolves a host name and applies the SSRF guard to every address it resolves to.
///
/// The caller connects to the address returned here, never to the name again, so a DNS
/// answer that changes between the check and the connection (DNS rebinding) cannot steer
/// Herald to a private address.
package struct TargetResolver: Sendable {
    /// Whether loopback, private and other non-public addresses are allowed
    /// (`--allow-private-targets`, `HERALD_ALLOW_PRIVATE_TARGETS`, default off).
    package var allowPrivateTargets: Bool

    package init(allowPrivateTargets: Bool) {
        self.allowPrivateTargets = allowPrivateTargets
    }

    /// The address to connect to for `host`.
    ///
    /// Runs `getaddrinfo` on NIO's blocking-I/O thread pool, never on an event loop.
    /// - Throws: ``HeraldError`` `.invalid` when the name does not resolve, or when any address
    ///   it resolves to is not public and private targets are not allowed.
    /// - Parameter field: the request field that named the host, for the error's detail.
    package func resolve(_ host: String, for field: String? = nil) async throws -> IPAddress {
        let subject = field.map { "\($0): host \(host)" } ?? "host \(host)"
        let addresses: [IPAddress]
        if let literal = IPAddress(host) {
            addresses = [literal]
        } else {
            addresses = try await NIOThreadPool.singleton.runIfActive { Self.lookUp(host) }
        }
        guard let first = addresses.first else { throw HeraldError.invalid("\(subject) does not resolve") }
        if !allowPrivateTargets, let refused = addresses.first(where: { !AddressPolicy.isPublic($0) }) {
            throw HeraldError.invalid(
                "\(subject) resolves to \(refused), which is not a public address (see --allow-private-targets)"
            )
        }
        // Prefer IPv4 when both exist: loopback test servers usually listen on 127.0.0.1 only.
        return addresses.first { $0.bytes.count == 4 } ?? first
    }

    private static func lookUp(_ host: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let head = list else { return [] }
        defer { freeaddrinfo(head) }
        var addresses: [IPAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = head
        while let entry = cursor {
            if let sockaddr = entry.pointee.ai_addr {
                // Linux layouts: sockaddr_in keeps the address at byte 4 (4 bytes), sockaddr_in6 at
                // byte 8 (16 bytes). Reading raw bytes avoids depending on which module exports them.
                let raw = UnsafeRawPointer(sockaddr)
                switch entry.pointee.ai_family {
                case AF_INET:
                    addresses.append(IPAddress(bytes: Array(UnsafeRawBufferPointer(start: raw + 4, count: 4))))
                case AF_INET6:
                    addresses.append(IPAddress(bytes: Array(UnsafeRawBufferPointer(start: raw + 8, count: 16))))
                default:
                    break
                }
            }
            cursor = entry.pointee.ai_next
        }
        return Array(Set(addresses)).sorted { $0.bytes.lexicographicallyPrecedes($1.bytes) }
    }
}
