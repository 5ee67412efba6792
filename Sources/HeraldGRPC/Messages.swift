internal import GRPCCore
internal import HeraldCore
internal import SwiftProtobuf

// Herald's model as protobuf messages, and back. The JSON forms (`data_json`, the REST check
// document) stay the source of truth; these are views of them.

extension Herald_V1_Check {
    /// The check as the gRPC surface shows it (never with its callback secret).
    init(_ check: Check) {
        self.init()
        id = check.id.rawValue
        kind = check.spec.kind.rawValue
        // An external check made over REST may carry params that are not an object, which a
        // Struct cannot hold; its events' `data_json` has them.
        if case .object(let members) = check.spec.paramsJSON {
            params = Google_Protobuf_Struct(fields: members.mapValues(\.protobufValue))
        }
        state = Herald_V1_CheckState(check.state)
        if let result = check.result { self.result = result.protobufValue }
        if let failure = check.error {
            if case .string(let message)? = failure.objectValue?["message"] {
                error = message
            } else {
                error = failure.jsonText
            }
        }
        version = UInt64(check.version)
        createdAt = Google_Protobuf_Timestamp(check.createdAt)
        updatedAt = Google_Protobuf_Timestamp(check.updatedAt)
        if let completed = check.completedAt { completedAt = Google_Protobuf_Timestamp(completed) }
        callbackURL = check.spec.callbackURL ?? ""
    }
}

extension Herald_V1_CheckState {
    init(_ state: CheckState) {
        switch state {
        case .processing: self = .processing
        case .done: self = .done
        case .failed: self = .failed
        case .canceled: self = .canceled
        }
    }
}

extension Herald_V1_Event {
    init(_ event: Event) {
        self.init()
        channel = event.channel.rawValue
        offset = UInt64(event.offset)
        epoch = event.epoch.rawValue
        type = event.type
        time = Google_Protobuf_Timestamp(event.time)
        dataJson = event.data
    }

    /// The loss signal, as on SSE: an event of type `herald.reset` whose `offset` is the last
    /// one still kept (its events follow) and whose data is the reset marker.
    init(reset read: EventRead, channel: ChannelName) {
        self.init()
        self.channel = channel.rawValue
        epoch = read.epoch.rawValue
        offset = UInt64(read.next)
        type = "herald.reset"
        dataJson = read.resetJSON(channel: channel)
    }
}

extension Herald_V1_CreateCheckRequest {
    /// The request as the body of `POST /api/v1/checks`, so both surfaces validate alike.
    var body: JSONValue {
        var members: [String: JSONValue] = [:]
        if !kind.isEmpty { members["kind"] = .string(kind) }
        if hasParams { members["params"] = JSONValue(params) }
        if !callbackURL.isEmpty { members["callback_url"] = .string(callbackURL) }
        if !callbackSecret.isEmpty { members["callback_secret"] = .string(callbackSecret) }
        return .object(members)
    }
}

extension Google_Protobuf_Timestamp {
    init(_ time: Timestamp) {
        let milliseconds = time.millisecondsSince1970
        let (seconds, remainder) = milliseconds.quotientAndRemainder(dividingBy: 1000)
        self.init(seconds: seconds, nanos: Int32(remainder) * 1_000_000)
    }
}

extension JSONValue {
    /// A `google.protobuf.Struct` as a JSON object. Protobuf numbers are doubles: whole ones
    /// become integers again, so `{"ms": 300}` reads as it was meant.
    init(_ value: Google_Protobuf_Struct) {
        self = .object(value.fields.mapValues(JSONValue.init))
    }

    init(_ value: Google_Protobuf_Value) {
        switch value.kind {
        case .nullValue, nil: self = .null
        case .boolValue(let flag): self = .bool(flag)
        case .stringValue(let text): self = .string(text)
        case .numberValue(let number):
            if number.rounded() == number, abs(number) <= 9_007_199_254_740_992 {
                self = .int(Int64(number))
            } else {
                self = .double(number)
            }
        case .structValue(let object): self = JSONValue(object)
        case .listValue(let list): self = .array(list.values.map(JSONValue.init))
        }
    }

    var protobufValue: Google_Protobuf_Value {
        switch self {
        case .null: Google_Protobuf_Value(nilLiteral: ())
        case .bool(let flag): Google_Protobuf_Value(boolValue: flag)
        case .int(let number): Google_Protobuf_Value(numberValue: Double(number))
        case .double(let number): Google_Protobuf_Value(numberValue: number)
        case .string(let text): Google_Protobuf_Value(stringValue: text)
        case .array(let items):
            Google_Protobuf_Value(listValue: Google_Protobuf_ListValue(values: items.map(\.protobufValue)))
        case .object(let members):
            Google_Protobuf_Value(structValue: Google_Protobuf_Struct(fields: members.mapValues(\.protobufValue)))
        }
    }
}

extension RPCError {
    /// The gRPC status of a Herald error: one table for every RPC.
    init(_ error: HeraldError) {
        let code: RPCError.Code =
            switch error.code {
            case .malformed, .invalid, .unsupportedMediaType: .invalidArgument
            case .notFound: .notFound
            case .conflict: .failedPrecondition
            case .unauthorized, .tokenRequired, .tokenInvalid, .tokenExpired: .unauthenticated
            case .channelForbidden, .forbidden: .permissionDenied
            case .overloaded, .tooLarge, .rateLimited: .resourceExhausted
            case .unavailable: .unavailable
            default: .internalError
            }
        // The Herald code travels beside the status, so a client tells token-expired from token-invalid.
        var metadata = Metadata()
        metadata.addString(error.code.rawValue, forKey: "herald-error")
        if let seconds = error.retryAfter { metadata.addString(String(seconds), forKey: "retry-after") }
        self.init(
            code: code,
            message: error.code == .internal ? "an internal error occurred" : error.message,
            metadata: metadata
        )
    }
}
