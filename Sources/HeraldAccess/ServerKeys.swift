internal import Foundation

/// The server API keys (`api-key`): one or several named keys, any of which has every right,
/// so a key is rotated by adding the new one, moving clients over, then removing the old.
package struct ServerKeys: Sendable {
    package struct Key: Sendable {
        package var name: String
        fileprivate var bytes: [UInt8]
    }

    package private(set) var keys: [Key]

    /// Parses `name=key,name2=key2` (a key without a name is called `key1`, `key2`, ...).
    /// - Returns: `nil` when the list holds no key or a key shorter than 8 bytes.
    package init?(list: String) {
        var keys: [Key] = []
        for (index, item) in list.split(separator: ",").enumerated() {
            let text = item.trimmingCharacters(in: .whitespaces)
            var name = "key\(index + 1)"
            var key = text
            // `name=key` when what follows `=` could be a key; else the whole text is one
            // (base64 padding is not a name).
            if let equals = text.firstIndex(of: "="), equals != text.startIndex,
                text[..<equals].utf8.allSatisfy(Self.isNameByte), text[text.index(after: equals)...].utf8.count >= 8
            {
                name = String(text[..<equals])
                key = String(text[text.index(after: equals)...])
            }
            guard key.utf8.count >= 8 else { return nil }
            keys.append(Key(name: name, bytes: Array(key.utf8)))
        }
        guard !keys.isEmpty else { return nil }
        self.keys = keys
    }

    /// The name of the key `candidate` is, compared in constant time against every key (the
    /// time depends on the keys' lengths only, not on where a guess differs).
    package func match(_ candidate: some StringProtocol) -> String? {
        let bytes = Array(candidate.utf8)
        var found: String?
        for key in keys where constantTimeEquals(bytes, key.bytes) { found = key.name }
        return found
    }

    private static func isNameByte(_ byte: UInt8) -> Bool {
        (97...122).contains(byte) || (65...90).contains(byte) || (48...57).contains(byte) || byte == UInt8(ascii: "-")
            || byte == UInt8(ascii: "_")
    }
}

/// Compares two byte strings in time that depends only on their lengths.
package func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
    guard lhs.count == rhs.count else { return false }
    var difference: UInt8 = 0
    for index in lhs.indices { difference |= lhs[index] ^ rhs[index] }
    return difference == 0
}
