internal import Foundation

/// A channel name in which `*` matches any run of characters: `orders`, `user:42:*`, `*`.
///
/// Patterns name what a client may read or publish (a token's `channels` and `publish` claims,
/// `public-channels`) and which hosts checks may reach (`check-allowed-targets`). Matching is
/// on bytes, with no other special character, so a pattern never means more than it says.
package struct ChannelPattern: Sendable, Hashable, CustomStringConvertible {
    private let parts: [[UInt8]]
    package let description: String

    /// - Returns: `nil` for an empty pattern or one longer than 200 bytes.
    package init?(_ text: String) {
        guard (1...200).contains(text.utf8.count) else { return nil }
        description = text
        parts = text.utf8.split(separator: UInt8(ascii: "*"), omittingEmptySubsequences: false).map(Array.init)
    }

    /// Whether `name` matches: the literal parts in order, the first at the start and the
    /// last at the end, anything in between where the pattern has `*`.
    package func matches(_ name: some StringProtocol) -> Bool {
        let bytes = Array(name.utf8)
        guard parts.count > 1 else { return bytes == parts[0] }
        let first = parts[0]
        let last = parts[parts.count - 1]
        guard bytes.count >= first.count + last.count, bytes.starts(with: first),
            bytes[(bytes.count - last.count)...].elementsEqual(last)
        else { return false }
        var position = first.count
        let end = bytes.count - last.count
        for part in parts[1..<(parts.count - 1)] where !part.isEmpty {
            guard let found = Self.find(part, in: bytes, from: position, before: end) else { return false }
            position = found + part.count
        }
        return true
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int, before end: Int) -> Int? {
        guard end - start >= needle.count else { return nil }
        for index in start...(end - needle.count) where haystack[index..<(index + needle.count)].elementsEqual(needle) {
            return index
        }
        return nil
    }
}

/// Several patterns; a name matches the set when it matches any of them.
package struct PatternSet: Sendable, Hashable, CustomStringConvertible {
    package var patterns: [ChannelPattern]

    package init(_ patterns: [ChannelPattern] = []) { self.patterns = patterns }

    /// Parses a comma-separated list (`orders,user:42:*`); blanks are ignored.
    /// - Returns: `nil` when an item is not a valid pattern.
    package init?(list: String) {
        var patterns: [ChannelPattern] = []
        for item in list.split(separator: ",") {
            let text = item.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            guard let pattern = ChannelPattern(text) else { return nil }
            patterns.append(pattern)
        }
        self.init(patterns)
    }

    /// Every name.
    package static let everything = PatternSet([ChannelPattern("*")!])

    package var isEmpty: Bool { patterns.isEmpty }
    package var matchesEverything: Bool { patterns.contains { $0.description == "*" } }

    package func matches(_ name: some StringProtocol) -> Bool { patterns.contains { $0.matches(name) } }

    package var description: String { patterns.isEmpty ? "none" : patterns.map(\.description).joined(separator: ",") }
}
