internal import Foundation
internal import HTTPTypes
internal import HeraldCore
internal import Hummingbird
internal import NIOCore

extension HTTPField.Name {
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
    static let prefer = HTTPField.Name("Prefer")!
    static let preferenceApplied = HTTPField.Name("Preference-Applied")!
}

extension Request {
    /// The body as JSON, after checking its media type and size.
    ///
    /// - Throws: `.unsupportedMediaType` (415) unless the type is JSON, `.tooLarge` (413)
    ///   past `limit` bytes, `.malformed` (400) when it is not well-formed JSON.
    /// - Parameter empty: what a request with no body at all stands for, when a body is optional.
    func jsonBody(limit: Int, emptyAs empty: JSONValue? = nil) async throws -> JSONValue {
        let type = headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased()
        if let empty, type == nil, (try? await body.collect(upTo: 1))?.readableBytes == 0 { return empty }
        guard let type, type == "application/json" || (type.hasPrefix("application/") && type.hasSuffix("+json")) else {
            throw HeraldError(.unsupportedMediaType, "the body must be application/json")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw HeraldError(.tooLarge, "the body is larger than \(limit) bytes")
        } catch let error as HTTPError where error.status == .contentTooLarge {
            throw HeraldError(.tooLarge, "the body is larger than \(limit) bytes")
        }
        guard buffer.readableBytes > 0 else {
            throw HeraldError.malformed("the body is empty; a JSON object is expected")
        }
        do {
            return try JSONValue.parse(Data(buffer.readableBytesView))
        } catch {
            throw HeraldError.malformed("the body is not valid JSON: \(error)")
        }
    }

    /// A query parameter, or `nil` when absent: the first of that name, percent-decoded, as
    /// Hummingbird's `queryParameters` reads it. That map is parsed anew on every call and a
    /// route asks for several (a poll: eight), so a value without `%` is found by a byte scan.
    func query(_ name: String) -> String? {
        guard let query = uri.query else { return nil }
        for pair in query.utf8.split(separator: UInt8(ascii: "&")) {
            let equals = pair.firstIndex(of: UInt8(ascii: "=")) ?? pair.endIndex
            guard pair[..<equals].elementsEqual(name.utf8) else { continue }
            let value = equals == pair.endIndex ? pair[equals...] : pair[pair.index(after: equals)...]
            if value.contains(UInt8(ascii: "%")) { return uri.queryParameters.get(name) }
            return String(Substring(value))
        }
        return nil
    }

    /// `?cursor=` of a list route: absent or empty means the first page.
    var pageCursor: String? {
        query("cursor").flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The client's position in a channel: `?since=<offset>` (absent or empty: from now) and
    /// `?epoch=<epoch>`.
    /// - Throws: `.invalid` when `since` is not a non-negative integer.
    func position() throws(HeraldError) -> (since: Offset?, epoch: Epoch?) {
        let epoch = query("epoch").map(Epoch.init)
        guard let text = query("since"), !text.isEmpty else { return (nil, epoch) }
        guard let offset = Offset(text), offset >= 0 else {
            throw .invalid("since must be a non-negative integer offset, not '\(text)'")
        }
        return (offset, epoch)
    }

    /// How long a long poll may hold: `?wait=S` or `Prefer: wait=S`, capped at `cap`;
    /// zero when neither is given.
    /// - Throws: `.invalid` when the value is not a non-negative number of seconds.
    func waitDuration(cap: Duration) throws(HeraldError) -> Duration {
        var text = query("wait")
        if text == nil, let prefer = headers[.prefer] {
            for preference in prefer.split(separator: ",") {
                let parts = preference.split(separator: "=", maxSplits: 1).map {
                    String($0).trimmingCharacters(in: .whitespaces)
                }
                if parts.count == 2, parts[0].lowercased() == "wait" { text = parts[1] }
            }
        }
        guard let text else { return .zero }
        guard let seconds = decimalSeconds(text), seconds >= 0 else {
            throw .invalid("wait must be a non-negative number of seconds, not '\(text)'")
        }
        return Duration(seconds: seconds, atMost: cap)
    }

    /// The JSONP callback name, validated, or `nil` when none was asked for.
    /// - Throws: `.malformed` (400) when the name is not a safe JavaScript identifier path,
    ///   `.forbidden` (403) when JSONP is turned off (`jsonp: false`).
    func jsonpCallback(enabled: Bool) throws(HeraldError) -> String? {
        guard let name = query("callback") else { return nil }
        guard enabled else { throw HeraldError(.forbidden, "JSONP is turned off on this server (jsonp: false)") }
        let bytes = Array(name.utf8)
        func isStart(_ byte: UInt8) -> Bool {
            (65...90).contains(byte) || (97...122).contains(byte) || byte == UInt8(ascii: "_")
                || byte == UInt8(ascii: "$")
        }
        guard let first = bytes.first, isStart(first), bytes.count <= 64,
            bytes.dropFirst().allSatisfy({ isStart($0) || (48...57).contains($0) || $0 == UInt8(ascii: ".") })
        else {
            throw .malformed("callback must match ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$")
        }
        return name
    }

    /// The heartbeat interval a stream asks for with `heartbeat=S`, at most `cap`.
    /// - Throws: `.invalid` (422) unless S is a number of seconds, 1 or more.
    func heartbeat(cap: Duration) throws(HeraldError) -> Duration {
        guard let text = query("heartbeat") else { return cap }
        guard let seconds = decimalSeconds(text), seconds >= 1 else {
            throw .invalid("heartbeat must be a number of seconds, 1 or more")
        }
        return Duration(seconds: seconds, atMost: cap)
    }

    /// Whether a stream announces itself (`welcome=1`); `welcome=0` or none: it does not.
    /// - Throws: `.invalid` (422) for any other value.
    func welcome() throws(HeraldError) -> Bool {
        switch query("welcome") {
        case nil, "0"?: return false
        case "1"?: return true
        default: throw .invalid("welcome must be 1 or 0")
        }
    }

    /// The iframe stream's `tag`, validated, or `nil` when none was asked for.
    /// - Throws: `.invalid` (422) unless it is 1 to 64 of `A-Z a-z 0-9 _ -`.
    func frameTag() throws(HeraldError) -> String? {
        guard let tag = query("tag") else { return nil }
        let isSafe = tag.utf8.allSatisfy { byte in
            (65...90).contains(byte) || (97...122).contains(byte) || (48...57).contains(byte)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
        guard isSafe, (1...64).contains(tag.utf8.count) else {
            throw .invalid("tag must match ^[A-Za-z0-9_-]{1,64}$")
        }
        return tag
    }
}

/// A finite decimal number (`30`, `2.5`, `1e3`), or `nil`: not hexadecimal, `inf` or `nan`,
/// which `Double.init` would also take.
func decimalSeconds(_ text: String) -> Double? {
    guard text.utf8.allSatisfy({ (48...57).contains($0) || "+-.eE".utf8.contains($0) }),
        let value = Double(text), value.isFinite
    else { return nil }
    return value
}

/// A JSON answer, or a JSONP one when `callback` is given.
///
/// JSONP answers are `200` scripts `/**/NAME(...);` and are never cached.
func jsonResponse(
    _ status: HTTPResponse.Status = .ok,
    _ json: String,
    headers: HTTPFields = [:],
    callback: String? = nil
) -> Response {
    var headers = headers
    if callback != nil {
        headers[.contentType] = "application/javascript; charset=utf-8"
        headers[.cacheControl] = "no-store"
    } else {
        headers[.contentType] = "application/json"
        if headers[.cacheControl] == nil { headers[.cacheControl] = "no-cache" }
    }
    return Response(status: status, headers: headers, body: .init(byteBuffer: answerBody(json, callback: callback)))
}

/// `json` as a response body: itself, or with a JSONP `callback`, a script calling it.
func answerBody(_ json: String, callback: String?) -> ByteBuffer {
    ByteBuffer(string: callback.map { "/**/\($0)(\(json));" } ?? json)
}
