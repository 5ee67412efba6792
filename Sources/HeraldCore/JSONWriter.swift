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
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "<", ">", "&", "\u{2028}", "\u{2029}":
                out += "\\u" + hex4(scalar.value)
            default:
                if scalar.value < 0x20 {
                    out += "\\u" + hex4(scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
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
