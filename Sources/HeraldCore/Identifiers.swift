/// A check's id: 16 random bytes (128 bits) in URL-safe base64 without padding, 22 characters.
///
/// Knowing the id is what lets a client read a check, so it comes from the system's
/// cryptographically secure generator and is never sequential.
package struct CheckID: Sendable, Hashable, CustomStringConvertible {
    package let rawValue: String

    /// Validates a client-supplied id: 22 URL-safe base64 characters.
    package init?(_ text: some StringProtocol) {
        guard text.utf8.count == 22, text.utf8.allSatisfy(isBase64URL) else { return nil }
        rawValue = String(text)
    }

    /// A fresh random id. It never starts with `-`, which a command line takes for an option
    /// (`herald watch -tLf...` failed one time in 64); that costs 0.02 of its 128 bits.
    package static func random() -> CheckID {
        while true {
            let token = randomToken(bytes: 16)
            if !token.hasPrefix("-") { return CheckID(unchecked: token) }
        }
    }

    private init(unchecked: String) { rawValue = unchecked }

    package var description: String { rawValue }

    /// The channel that carries this check's events, `check:{id}`.
    package var channel: ChannelName { ChannelName(checkID: self) }
}

/// A channel name matching `^[A-Za-z0-9_\-:.@]{1,200}$`; one that exists is valid.
package struct ChannelName: Sendable, Hashable, CustomStringConvertible {
    package let rawValue: String

    package init?(_ text: some StringProtocol) {
        let bytes = text.utf8
        guard (1...200).contains(bytes.count), bytes.allSatisfy(isChannelByte) else { return nil }
        rawValue = String(text)
    }

    fileprivate init(checkID: CheckID) { rawValue = "check:" + checkID.rawValue }

    package var description: String { rawValue }

    /// The check whose channel this is, when the name is `check:{id}`.
    package var checkID: CheckID? {
        guard rawValue.hasPrefix("check:") else { return nil }
        return CheckID(rawValue.dropFirst(6))
    }

    /// Whether the name is in the `check:` namespace, which only Herald itself writes to.
    package var isCheckChannel: Bool { rawValue.hasPrefix("check:") }

    /// What a client is told when its text is not a channel name.
    package static let rule = "channel must match ^[A-Za-z0-9_\\-:.@]{1,200}$"

    /// Refuses the `check:` namespace to an application that publishes.
    package func requireApplicationChannel() throws(HeraldError) {
        if isCheckChannel { throw .invalid("channels named check:… belong to checks; publish to another name") }
    }
}

/// Names one unbroken history of a channel; it changes only when that history was lost.
package struct Epoch: Sendable, Hashable, CustomStringConvertible {
    package let rawValue: String

    package init(_ rawValue: String) { self.rawValue = rawValue }

    /// A fresh epoch: 6 random bytes, 8 URL-safe characters.
    package static func random() -> Epoch { Epoch(randomToken(bytes: 6)) }

    package var description: String { rawValue }

    /// Whether a client's position in `claimed` belongs to this epoch: no epoch, or an empty
    /// one (what a channel without history reports), matches any.
    package func accepts(_ claimed: Epoch?) -> Bool {
        claimed.map { $0.rawValue.isEmpty || $0 == self } ?? true
    }
}

/// A position in a channel's log: offsets start at 1 and grow by one per event.
package typealias Offset = Int64

/// Random bytes from the system CSPRNG, as URL-safe base64 without padding.
package func randomToken(bytes count: Int) -> String {
    base64URL(randomBytes(count))
}

/// A unique token that sorts by creation time: 12 hex digits of the milliseconds since 1970,
/// then 12 random bytes. Rows keyed by it are appended at the end of their index instead of
/// dirtying a page anywhere in it.
package func timeOrderedToken(at time: Timestamp) -> String {
    let milliseconds = String(UInt64(max(time.millisecondsSince1970, 0)), radix: 16)
    return String(repeating: "0", count: max(0, 12 - milliseconds.count)) + milliseconds + randomToken(bytes: 12)
}

/// `count` bytes from the system's cryptographically secure generator.
package func randomBytes(_ count: Int) -> [UInt8] {
    // Eight bytes per call: each call of the system generator is a system call.
    var generator = SystemRandomNumberGenerator()
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count + 7)
    while bytes.count < count {
        withUnsafeBytes(of: generator.next()) { bytes.append(contentsOf: $0) }
    }
    return Array(bytes.prefix(count))
}

/// URL-safe base64 (RFC 4648 §5) without padding.
package func base64URL(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    var out = [UInt8]()
    out.reserveCapacity((bytes.count * 4 + 2) / 3)
    var index = 0
    while index + 2 < bytes.count {
        let value = UInt32(bytes[index]) << 16 | UInt32(bytes[index + 1]) << 8 | UInt32(bytes[index + 2])
        for shift in [18, 12, 6, 0] { out.append(alphabet[Int(value >> UInt32(shift) & 63)]) }
        index += 3
    }
    let rest = bytes.count - index
    if rest > 0 {
        let value = UInt32(bytes[index]) << 16 | (rest == 2 ? UInt32(bytes[index + 1]) << 8 : 0)
        out.append(alphabet[Int(value >> 18 & 63)])
        out.append(alphabet[Int(value >> 12 & 63)])
        if rest == 2 { out.append(alphabet[Int(value >> 6 & 63)]) }
    }
    return String(decoding: out, as: UTF8.self)
}

private func isBase64URL(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
        true
    default: false
    }
}

private func isChannelByte(_ byte: UInt8) -> Bool {
    isBase64URL(byte) || byte == UInt8(ascii: ":") || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "@")
}
