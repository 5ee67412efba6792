internal import Foundation

/// Any JSON value, as checks and events carry it.
public enum HeraldJSON: Sendable, Hashable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([HeraldJSON])
    case object([String: HeraldJSON])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([HeraldJSON].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: HeraldJSON].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            // Whole numbers print as integers (7, not 7.0).
            if value.rounded() == value, abs(value) < 1e15 {
                try container.encode(Int64(value))
            } else {
                try container.encode(value)
            }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    /// Parses JSON text.
    public init(parsing text: String) throws {
        self = try JSONDecoder().decode(HeraldJSON.self, from: Data(text.utf8))
    }

    public subscript(key: String) -> HeraldJSON? {
        if case .object(let members) = self { members[key] } else { nil }
    }

    public var string: String? {
        if case .string(let value) = self { value } else { nil }
    }

    public var number: Double? {
        if case .number(let value) = self { value } else { nil }
    }

    /// Compact JSON with sorted keys.
    public var description: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }
}

/// One event of a channel.
public struct ChannelEvent: Sendable, Hashable, Codable {
    public var channel: String
    /// Grows by one per channel.
    public var offset: Int
    /// Changes only when the channel's history was lost.
    public var epoch: String
    public var type: String
    public var time: String
    public var data: HeraldJSON

    /// Whether this is a check's last event (`check.done`, `check.failed`, `check.canceled`).
    public var endsCheck: Bool {
        channel.hasPrefix("check:") && ["check.done", "check.failed", "check.canceled"].contains(type)
    }
}

/// Where a channel is followed from: after `offset` in `epoch`.
public struct Position: Sendable, Hashable {
    public var epoch: String
    public var offset: Int

    public init(epoch: String = "", offset: Int) {
        self.epoch = epoch
        self.offset = offset
    }
}

/// The transports of ``HeraldClient/events(_:transports:)``, best first.
public enum Transport: String, Sendable, CaseIterable, Hashable {
    case websocket
    case sse
    case ndjson
    case longPolling = "long-polling"
}

/// What a followed set of channels yields.
public enum HeraldUpdate: Sendable, Hashable {
    /// A transport won the race (or took over after a reconnect).
    case transport(Transport)
    case event(ChannelEvent)
    /// The position on `channel` was lost; the events that follow are what the server still
    /// keeps (for a check, its snapshot).
    case gap(channel: String, epoch: String)
    /// The connection ended; it is being re-established from every channel's position.
    case disconnected(reason: String)
}

/// An error answer of Herald (an RFC 9457 problem document), or a transport failure.
public struct HeraldClientError: Error, Sendable, CustomStringConvertible {
    public var status: Int?
    public var detail: String
    /// The answer's `Retry-After` (429 over a rate limit, 503 over a connection cap).
    public var retryAfter: Duration?

    public init(status: Int? = nil, _ detail: String, retryAfter: Duration? = nil) {
        self.status = status
        self.detail = detail
        self.retryAfter = retryAfter
    }

    public var description: String {
        status.map { "\($0): \(detail)" } ?? detail
    }
}
