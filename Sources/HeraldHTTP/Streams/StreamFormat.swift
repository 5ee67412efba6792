internal import HTTPTypes
internal import HeraldCore
internal import NIOCore

/// The wire formats of `GET .../events` streams: one stream loop, three framings.
enum StreamFormat: Sendable {
    /// Server-Sent Events (`Accept: text/event-stream` or `?format=sse`).
    case sse
    /// XHR streaming: one event JSON per line, chunked (`Accept: application/x-ndjson` or `?format=ndjson`).
    case ndjson
    /// Forever-iframe: `<script>` chunks calling `parent.heraldEvent(...)` (`?format=html`).
    case html

    /// The format a request asks for, or `nil` for a JSON poll.
    /// - Throws: `.invalid` for an unknown `format`.
    init?(_ format: String?, accept: String?) throws(HeraldError) {
        switch format {
        case "sse"?: self = .sse
        case "ndjson"?: self = .ndjson
        case "html"?: self = .html
        case "json"?: return nil
        case let other?: throw .invalid("format must be json, sse, ndjson or html, not '\(other)'")
        case nil:
            if let accept, accept.utf8.contains(ascii: "text/event-stream") {
                self = .sse
            } else if let accept, accept.utf8.contains(ascii: "application/x-ndjson") {
                self = .ndjson
            } else {
                return nil
            }
        }
    }

    /// Whether an `Accept` header asks for a stream format.
    static func acceptsStream(_ accept: String) -> Bool {
        accept.utf8.contains(ascii: "text/event-stream") || accept.utf8.contains(ascii: "application/x-ndjson")
    }

    var headers: HTTPFields {
        var headers: HTTPFields = [.cacheControl: "no-cache", .xAccelBuffering: "no"]
        switch self {
        case .sse: headers[.contentType] = "text/event-stream"
        case .ndjson: headers[.contentType] = "application/x-ndjson"
        case .html: headers[.contentType] = "text/html; charset=utf-8"
        }
        return headers
    }

    /// The first bytes, sent at once so clients and proxies see the stream is live.
    var preamble: String {
        switch self {
        case .sse: return "retry: 2000\n\n"
        case .ndjson: return ""
        case .html:
            // Old browsers render a partial document only after about 1 KiB (Safari, IE), so pad.
            return "<!doctype html><html><head><meta charset=\"utf-8\"><title>herald</title></head><body>\n<!--"
                + String(repeating: " ", count: 1024) + "-->\n"
        }
    }

    /// The last bytes of a stream that ends.
    var epilogue: String {
        self == .html ? "</body></html>\n" : ""
    }
}

/// How one stream frames what it sends: its format, whether it announces itself (`welcome=1`:
/// a welcome message first, heartbeats a script can see and, in SSE, every message a plain
/// `message` whose JSON carries its type, so `EventSource.onmessage` sees them all), and the
/// iframe's `tag`.
struct StreamFraming: Sendable {
    let format: StreamFormat
    let announces: Bool
    let tag: String?

    /// One event: for SSE and NDJSON the event's shared bytes. The JSON escapes `<`, `>`, `&`,
    /// U+2028 and U+2029, so it is safe in `<script>`.
    func encode(_ event: EncodedEvent) -> ByteBuffer {
        switch format {
        case .sse where announces:
            ByteBuffer(string: "id: \(event.event.epoch.rawValue):\(event.event.offset)\ndata: \(event.json)\n\n")
        case .sse: event.sse
        case .ndjson: event.ndjson
        case .html: ByteBuffer(string: script(event.json))
        }
    }

    /// One event as an HTTP/1.1 chunk: the event's shared chunk for SSE and NDJSON.
    func chunk(_ event: EncodedEvent) -> ByteBuffer {
        switch format {
        case .sse where !announces: event.sseChunk
        case .ndjson: event.ndjsonChunk
        default: EncodedEvent.chunk(encode(event))
        }
    }

    /// Events in order as one buffer: a single event's shared bytes as they are, several
    /// copied into one buffer so they leave in one write.
    func encode(_ events: [EncodedEvent]) -> ByteBuffer {
        guard events.count > 1 else { return events.first.map(encode) ?? ByteBuffer() }
        let parts = events.map(encode)
        var batch = ByteBuffer()
        batch.reserveCapacity(parts.reduce(0) { $0 + $1.readableBytes })
        for part in parts { batch.writeImmutableBuffer(part) }
        return batch
    }

    /// A message that is not an event (`herald.reset`, `herald.welcome`, `herald.heartbeat`):
    /// an SSE message of that type without an id, an NDJSON line, an iframe script.
    func marker(_ json: String, type: String) -> String {
        switch format {
        case .sse where announces: "data: \(json)\n\n"
        case .sse: "event: \(type)\ndata: \(json)\n\n"
        case .ndjson: json + "\n"
        case .html: script(json)
        }
    }

    func heartbeat(channel: ChannelName) -> String {
        guard announces else {
            switch format {
            case .sse: return ": heartbeat\n\n"
            case .ndjson: return "\n"
            case .html: return "<!-- heartbeat -->\n"
            }
        }
        var writer = JSONWriter()
        writer.string("type", "herald.heartbeat")
        writer.string("channel", channel.rawValue)
        return marker(writer.result, type: "herald.heartbeat")
    }

    private func script(_ json: String) -> String {
        let tagArgument = tag.map { ",\"\($0)\"" } ?? ""
        return "<script>parent.heraldEvent(\(json)\(tagArgument));</script>\n"
    }
}

extension String.UTF8View {
    /// Whether `needle` occurs in these bytes: a plain byte search, much cheaper than the
    /// Unicode-aware `contains(_:)` of strings, for header values read on every request.
    func contains(ascii needle: StaticString) -> Bool {
        let needle = UnsafeBufferPointer(start: needle.utf8Start, count: needle.utf8CodeUnitCount)
        guard let first = needle.first else { return true }
        var index = startIndex
        while let start = self[index...].firstIndex(of: first) {
            if self[start...].starts(with: needle) { return true }
            index = self.index(after: start)
        }
        return false
    }
}
