package import Foundation

extension JSONValue {
    /// Why a client's JSON text was refused.
    package struct ParseError: Error, Sendable, CustomStringConvertible {
        /// What is wrong, for a problem document's detail.
        package let description: String
    }

    /// Parses JSON text a client sent, refusing what `JSONDecoder` would quietly accept:
    /// an object that names one key twice (`{"kind": "delay", "kind": "http"}`) means two
    /// different things to two readers, so it is an error, not "the first one wins".
    ///
    /// - Throws: ``ParseError`` when the text is not well-formed JSON or repeats a key.
    package static func parse(_ data: Data) throws(ParseError) -> JSONValue {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch let DecodingError.dataCorrupted(context) {
            throw ParseError(description: context.debugDescription)
        } catch {
            throw ParseError(description: "unreadable")
        }
        var scanner = DuplicateKeyScanner(Array(data))
        if let key = scanner.firstDuplicate() {
            throw ParseError(description: "the key '\(key)' appears twice in one object")
        }
        return value
    }
}

/// Finds a key repeated within one object of JSON text that is already known to be
/// well-formed (so it only tracks strings and nesting, and never fails).
///
/// Bounded by the text: one set of keys per open object, at most as deep as the text nests.
private struct DuplicateKeyScanner {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func firstDuplicate() -> String? {
        // One entry per open container: the keys seen so far (nil for an array).
        var open: [Set<String>?] = []
        var expectingKey = false
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "{"):
                open.append([])
                expectingKey = true
                index += 1
            case UInt8(ascii: "["):
                open.append(nil)
                expectingKey = false
                index += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = open.popLast()
                expectingKey = false
                index += 1
            case UInt8(ascii: ","):
                expectingKey = open.last.map { $0 != nil } ?? false
                index += 1
            case UInt8(ascii: "\""):
                let key = string()
                if expectingKey, case let keys?? = open.last {
                    if keys.contains(key) { return key }
                    open[open.count - 1]?.insert(key)
                    expectingKey = false
                }
            default:
                index += 1
            }
        }
        return nil
    }

    /// Reads the string starting at `index` (a quote) and returns its value; escapes are
    /// decoded so `"k"` and `"\u006b"` are the same key.
    private mutating func string() -> String {
        let start = index
        index += 1
        var escaped = false
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            if byte == UInt8(ascii: "\\") {
                escaped = true
                index += 1
            } else if byte == UInt8(ascii: "\"") {
                break
            }
        }
        let token = bytes[start..<min(index, bytes.count)]
        guard escaped else { return String(decoding: token.dropFirst().dropLast(), as: UTF8.self) }
        return (try? JSONDecoder().decode(String.self, from: Data(token))) ?? String(decoding: token, as: UTF8.self)
    }
}
