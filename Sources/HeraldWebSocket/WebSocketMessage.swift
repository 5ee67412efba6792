internal import Foundation
internal import HeraldCore

/// A client's op, parsed and validated; or the error to answer it with.
enum ClientOp: Sendable {
    case subscribe(channel: ChannelName, since: Offset?, epoch: Epoch?)
    case unsubscribe(channel: ChannelName)
    case createCheck(JSONValue)
    case ping
    /// A client token, first or refreshed.
    case auth(token: String)
    case publish(channel: ChannelName, type: String, data: JSONValue)

    /// Parses one text message: `{"op": ..., "id": ..., ...}`.
    /// - Returns: the op and the client's `id` (echoed in the answer), or the error and that id.
    static func parse(_ text: String) -> (Result<ClientOp, OpError>, id: JSONValue?) {
        let value: JSONValue
        do {
            value = try JSONValue.parse(Data(text.utf8))
        } catch {
            return (.failure(OpError("malformed", "a message must be a JSON object: \(error)")), nil)
        }
        guard let members = value.objectValue else {
            return (.failure(OpError("malformed", "a message must be a JSON object")), nil)
        }
        let id = members["id"]
        guard case .string(let op)? = members["op"] else {
            return (.failure(OpError("malformed", "op is required")), id)
        }
        func channel() -> Result<ChannelName, OpError> {
            guard case .string(let text)? = members["channel"], let name = ChannelName(text) else {
                return .failure(OpError("invalid", ChannelName.rule))
            }
            return .success(name)
        }
        switch op {
        case "subscribe":
            var since: Offset?
            switch members["since"] {
            case nil, .null?: since = nil
            case .int(let offset)? where offset >= 0: since = offset
            default: return (.failure(OpError("invalid", "since must be a non-negative integer")), id)
            }
            var epoch: Epoch?
            switch members["epoch"] {
            case nil, .null?: epoch = nil
            case .string(let text)?: epoch = Epoch(text)
            default: return (.failure(OpError("invalid", "epoch must be a string")), id)
            }
            return (channel().map { .subscribe(channel: $0, since: since, epoch: epoch) }, id)
        case "unsubscribe":
            return (channel().map { .unsubscribe(channel: $0) }, id)
        case "create_check":
            guard let check = members["check"] else {
                return (.failure(OpError("invalid", "check is required: the body of POST /api/v1/checks")), id)
            }
            return (.success(.createCheck(check)), id)
        case "ping":
            return (.success(.ping), id)
        case "auth":
            guard case .string(let token)? = members["token"], !token.isEmpty else {
                return (.failure(OpError("invalid", "token is required: a client token (JWT)")), id)
            }
            return (.success(.auth(token: token)), id)
        case "publish":
            guard case .string(let type)? = members["type"] else {
                return (.failure(OpError("invalid", Event.typeRule)), id)
            }
            return (channel().map { .publish(channel: $0, type: type, data: members["data"] ?? .null) }, id)
        default:
            return (
                .failure(
                    OpError(
                        "unknown_op",
                        "op '\(op)' is unknown: use subscribe, unsubscribe, publish, create_check, auth or ping"
                    )
                ), id
            )
        }
    }
}

/// An `{"op": "error"}` answer: a stable code and a message.
struct OpError: Error, Sendable {
    var code: String
    var message: String
    /// Seconds to wait before sending the op again (`rate_limited`).
    var retryAfter: Int?

    init(_ code: String, _ message: String, retryAfter: Int? = nil) {
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
    }

    init(_ error: HeraldError) {
        self.init(
            error.code == .internal ? "internal" : error.code.opCode,
            error.code == .internal ? "an internal error occurred" : error.message,
            retryAfter: error.retryAfter
        )
    }
}

/// Server frames, written with ``JSONWriter``.
enum ServerFrame {
    static func subscribed(_ channel: ChannelName, _ read: EventRead, id: JSONValue?) -> String {
        var writer = JSONWriter()
        writer.string("op", "subscribed")
        writer.string("channel", channel.rawValue)
        writer.string("epoch", read.epoch.rawValue)
        writer.int("offset", read.next)
        writer.bool("recovered", read.recovered)
        if let id { writer.value("id", id) }
        return writer.result
    }

    /// The loss signal on a live subscription: `{"op": "reset", "channel", "epoch", "offset",
    /// "recovered": false}`; the events still kept follow, after `offset`'s predecessors.
    static func reset(_ channel: ChannelName, _ read: EventRead) -> String {
        var writer = JSONWriter()
        writer.string("op", "reset")
        writer.string("channel", channel.rawValue)
        writer.string("epoch", read.epoch.rawValue)
        writer.int("offset", read.next)
        writer.bool("recovered", false)
        return writer.result
    }

    static func simple(_ op: String, channel: ChannelName? = nil, id: JSONValue?) -> String {
        var writer = JSONWriter()
        writer.string("op", op)
        if let channel { writer.string("channel", channel.rawValue) }
        if let id { writer.value("id", id) }
        return writer.result
    }

    /// `{"op": "authed", "exp": <unix seconds>, "sub", "id"}`: the token was taken.
    static func authed(expires: Timestamp, subject: String?, id: JSONValue?) -> String {
        var writer = JSONWriter()
        writer.string("op", "authed")
        writer.int("exp", expires.millisecondsSince1970 / 1000)
        if let subject { writer.string("sub", subject) }
        if let id { writer.value("id", id) }
        return writer.result
    }

    /// `{"op": "expired", "channels": [...]}`: the token expired; these subscriptions stopped.
    static func expired(_ channels: [ChannelName]) -> String {
        var writer = JSONWriter()
        writer.string("op", "expired")
        writer.raw("channels", jsonArray(channels.lazy.map { JSONValue.string($0.rawValue).jsonText }))
        return writer.result
    }

    /// `{"op": "published", "channel", "offset", "epoch", "id"}`.
    static func published(_ event: Event, id: JSONValue?) -> String {
        var writer = JSONWriter()
        writer.string("op", "published")
        writer.string("channel", event.channel.rawValue)
        writer.int("offset", event.offset)
        writer.string("epoch", event.epoch.rawValue)
        if let id { writer.value("id", id) }
        return writer.result
    }

    static func created(_ checkJSON: String, id: JSONValue?) -> String {
        var writer = JSONWriter()
        writer.string("op", "created")
        writer.raw("check", checkJSON)
        if let id { writer.value("id", id) }
        return writer.result
    }

    static func error(_ error: OpError, channel: ChannelName? = nil, offset: Offset? = nil, id: JSONValue?) -> String {
        var writer = JSONWriter()
        writer.string("op", "error")
        writer.string("code", error.code)
        writer.string("message", error.message)
        if let seconds = error.retryAfter { writer.int("retry_after", Int64(seconds)) }
        if let channel { writer.string("channel", channel.rawValue) }
        if let offset { writer.int("offset", offset) }
        if let id { writer.value("id", id) }
        return writer.result
    }
}
