/// Builds a compact JSON object by appending members in the order written.
///
/// Herald's own documents (a check, an event, a poll answer) are written with this, so their
/// keys come out in a fixed, readable order and already-encoded fragments (an event's `data`)
/// are copied in as they are, never decoded and encoded again.
package struct JSONWriter: Sendable {
    private var text = "{"
    private var isEmpty = true

    package init() {}

    /// The finished object.
    package var result: String { text + "}" }

    private mutating func key(_ name: String) {
        if !isEmpty { text += "," }
        isEmpty = false
        Self.appendString(name, to: &text)
        text += ":"
    }

    package mutating func string(_ name: String, _ value: String?) {
        key(name)
        if let value { Self.appendString(value, to: &text) } else { text += "null" }
    }

    package mutating func int(_ name: String, _ value: Int64?) {
        key(name)
        text += value.map { String($0) } ?? "null"
    }

    package mutating func bool(_ name: String, _ value: Bool) {
        key(name)
        text += value ? "true" : "false"
    }

    package mutating func value(_ name: String, _ value: JSONValue?) {
        key(name)
        if let value { value.write(to: &text) } else { text += "null" }
    }

    /// Appends a member whose value is JSON text that is already valid.
    package mutating func raw(_ name: String, _ json: String) {
        key(name)
        text += json
    }

    /// Appends `value` as a JSON string literal, escaping what RFC 8259 requires and also
    /// `<`, `>`, `&`, U+2028 and U+2029, so the text is safe inside HTML `<script>` and JSONP.
    package static func appendString(_ value: String, to out: inout String) {
        out += "\""
        var value = value
        value.withUTF8 { bytes in
            // Copy runs of bytes that need no escape in one append each.
            var runStart = 0
            var index = 0
            while index < bytes.count {
                let byte = bytes[index]
                var escape: String?
                var width = 1
                switch byte {
                case UInt8(ascii: "\""): escape = "\\\""
                case UInt8(ascii: "\\"): escape = "\\\\"
                case UInt8(ascii: "\n"): escape = "\\n"
                case UInt8(ascii: "\r"): escape = "\\r"
                case UInt8(ascii: "\t"): escape = "\\t"
                case UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "&"): escape = "\\u" + hex4(UInt32(byte))
                case 0xE2
                where index + 2 < bytes.count && bytes[index + 1] == 0x80
                    && (bytes[index + 2] == 0xA8 || bytes[index + 2] == 0xA9):
                    escape = bytes[index + 2] == 0xA8 ? "\\u2028" : "\\u2029"  // line and paragraph separators
                    width = 3
                case ..<0x20: escape = "\\u" + hex4(UInt32(byte))
                default: break
                }
                if let escape {
                    out += String(decoding: UnsafeBufferPointer(rebasing: bytes[runStart..<index]), as: UTF8.self)
                    out += escape
                    index += width
                    runStart = index
                } else {
                    index += 1
                }
            }
            out += String(decoding: UnsafeBufferPointer(rebasing: bytes[runStart..<bytes.count]), as: UTF8.self)
        }
        out += "\""
    }

    private static func hex4(_ value: UInt32) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}

/// Writes a JSON array from already-encoded elements.
package func jsonArray(_ elements: some Sequence<String>) -> String {
    var out = "["
    var first = true
    for element in elements {
        if !first { out += "," }
        first = false
        out += element
    }
    return out + "]"
}
