import Foundation

/// The kinds of check Herald can run.
package enum CheckKind: String, Sendable, Hashable, CaseIterable {
    case delay, http, tcp, external
}

/// What a client asked for: a validated kind with its parameters, and an optional callback.
///
/// Built only by ``CheckSpec/validate(_:)`` (or from the store), so every instance is valid.
package struct CheckSpec: Sendable, Hashable {
    package enum Parameters: Sendable, Hashable {
        /// Ends after `milliseconds` with `outcome` and `result`.
        case delay(milliseconds: Int64, outcome: CheckState, result: JSONValue?)
        /// Requests `url` and compares the status with `expectStatus`.
        case http(url: String, method: String, expectStatus: Int, timeoutMilliseconds: Int64)
        /// Opens a TCP connection to `host:port`.
        case tcp(host: String, port: Int, timeoutMilliseconds: Int64)
        /// Waits for the application to report the outcome; `params` are kept as given.
        case external(JSONValue?)
    }

    /// Which of the check's events its callback receives.
    package enum CallbackEvents: String, Sendable, Hashable {
        /// Only the last one (`check.done`, `check.failed` or `check.canceled`): the default.
        case terminal
        /// Every event of the check's channel, `check.created` included.
        case all
    }

    package var parameters: Parameters
    package var callbackURL: String?
    package var callbackSecret: String?
    package var callbackEvents: CallbackEvents
    /// Set when the callback target answered `410 Gone`: no further event is sent to it.
    package var callbackStopped = false

    package init(
        parameters: Parameters,
        callbackURL: String? = nil,
        callbackSecret: String? = nil,
        callbackEvents: CallbackEvents = .terminal
    ) {
        self.parameters = parameters
        self.callbackURL = callbackURL
        self.callbackSecret = callbackSecret
        self.callbackEvents = callbackEvents
    }

    /// Whether the callback gets an event the check has in `state` once it is written.
    package func calls(_ state: CheckState) -> Bool {
        guard callbackURL != nil, !callbackStopped else { return false }
        return callbackEvents == .all || state.isTerminal
    }

    package var kind: CheckKind {
        switch parameters {
        case .delay: .delay
        case .http: .http
        case .tcp: .tcp
        case .external: .external
        }
    }

    /// The longest a `delay` check may wait: 10 minutes.
    package static let maxDelayMilliseconds: Int64 = 600_000
    /// The default and the longest network timeout of `http` and `tcp` checks.
    package static let defaultTimeoutMilliseconds: Int64 = 10_000
    package static let maxTimeoutMilliseconds: Int64 = 60_000

    /// `params` as the client sees them, with defaults filled in.
    package var paramsJSON: JSONValue {
        switch parameters {
        case .delay(let ms, let outcome, let result):
            var members: [String: JSONValue] = ["ms": .int(ms), "outcome": .string(outcome.rawValue)]
            if let result { members["result"] = result }
            return .object(members)
        case .http(let url, let method, let expect, let timeout):
            return .object([
                "url": .string(url), "method": .string(method), "expect_status": .int(Int64(expect)),
                "timeout_ms": .int(timeout),
            ])
        case .tcp(let host, let port, let timeout):
            return .object(["host": .string(host), "port": .int(Int64(port)), "timeout_ms": .int(timeout)])
        case .external(let params):
            return params ?? .object([:])
        }
    }
}

extension CheckSpec {
    /// Validates a create request body
    /// (`{"kind", "params", "callback_url", "callback_secret", "callback_events"}`).
    ///
    /// - Throws: ``HeraldError`` `.invalid` naming the first field that is wrong and why.
    package static func validate(_ body: JSONValue) throws(HeraldError) -> CheckSpec {
        guard let members = body.objectValue else {
            throw .invalid("the body must be a JSON object, not \(body.typeName)")
        }
        try rejectUnknown(
            members,
            allowed: ["kind", "params", "callback_url", "callback_secret", "callback_events"],
            in: ""
        )
        guard case .string(let kindName)? = members["kind"] else {
            throw .invalid("kind is required: one of \(CheckKind.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        guard let kind = CheckKind(rawValue: kindName) else {
            throw .invalid(
                "kind '\(kindName)' is unknown: use one of \(CheckKind.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        let params = members["params"] ?? .object([:])
        let parameters = try validateParameters(kind, params)
        let callbackURL = try members["callback_url"].flatMap { value throws(HeraldError) -> String? in
            if value == .null { return nil }
            guard case .string(let url) = value else { throw .invalid("callback_url must be a string") }
            try TargetURL.validate(url, field: "callback_url")
            return url
        }
        let secret = try members["callback_secret"].flatMap { value throws(HeraldError) -> String? in
            if value == .null { return nil }
            guard case .string(let secret) = value, WebhookSecret.isValid(secret) else {
                throw .invalid("callback_secret must be 'whsec_' followed by base64 of 24 to 64 bytes")
            }
            return secret
        }
        let events: CallbackEvents
        switch members["callback_events"] {
        case nil, .null?, .string("terminal")?: events = .terminal
        case .string("all")?: events = .all
        default: throw .invalid("callback_events must be \"terminal\" or \"all\"")
        }
        if callbackURL == nil {
            if secret != nil { throw .invalid("callback_secret is given without callback_url") }
            if members["callback_events"].map({ $0 != .null }) == true {
                throw .invalid("callback_events is given without callback_url")
            }
        }
        return CheckSpec(
            parameters: parameters,
            callbackURL: callbackURL,
            callbackSecret: secret,
            callbackEvents: events
        )
    }

    private static func validateParameters(_ kind: CheckKind, _ params: JSONValue) throws(HeraldError) -> Parameters {
        if kind == .external { return .external(params == .null ? nil : params) }
        guard let p = params.objectValue else { throw .invalid("params must be an object, not \(params.typeName)") }
        switch kind {
        case .delay:
            try rejectUnknown(p, allowed: ["ms", "outcome", "result"], in: "params.")
            let ms = try integer(p["ms"], "params.ms", in: 0...maxDelayMilliseconds, default: nil)
            let outcome: CheckState
            switch p["outcome"] {
            case nil, .string("done")?: outcome = .done
            case .string("failed")?: outcome = .failed
            default: throw .invalid("params.outcome must be \"done\" or \"failed\"")
            }
            return .delay(milliseconds: ms, outcome: outcome, result: p["result"])
        case .http:
            try rejectUnknown(p, allowed: ["url", "method", "expect_status", "timeout_ms"], in: "params.")
            guard case .string(let url)? = p["url"] else {
                throw .invalid("params.url is required: an http or https URL")
            }
            try TargetURL.validate(url, field: "params.url")
            let method: String
            switch p["method"] {
            case nil, .string("GET")?: method = "GET"
            case .string("HEAD")?: method = "HEAD"
            default: throw .invalid("params.method must be \"GET\" or \"HEAD\"")
            }
            let expect = try integer(p["expect_status"], "params.expect_status", in: 100...599, default: 200)
            let timeout = try integer(
                p["timeout_ms"],
                "params.timeout_ms",
                in: 1...maxTimeoutMilliseconds,
                default: defaultTimeoutMilliseconds
            )
            return .http(url: url, method: method, expectStatus: Int(expect), timeoutMilliseconds: timeout)
        case .tcp:
            try rejectUnknown(p, allowed: ["host", "port", "timeout_ms"], in: "params.")
            guard case .string(let host)? = p["host"], TargetURL.isValidHost(host) else {
                throw .invalid("params.host is required: a DNS name or an IP address")
            }
            let port = try integer(p["port"], "params.port", in: 1...65535, default: nil)
            let timeout = try integer(
                p["timeout_ms"],
                "params.timeout_ms",
                in: 1...maxTimeoutMilliseconds,
                default: defaultTimeoutMilliseconds
            )
            return .tcp(host: host, port: Int(port), timeoutMilliseconds: timeout)
        case .external:
            return .external(params)
        }
    }

    private static func integer(
        _ value: JSONValue?,
        _ field: String,
        in range: ClosedRange<Int64>,
        default fallback: Int64?
    ) throws(HeraldError) -> Int64 {
        switch value {
        case .int(let number)? where range.contains(number):
            return number
        case nil where fallback != nil:
            return fallback.unsafelyUnwrapped
        case nil:
            throw .invalid("\(field) is required: an integer in \(range.lowerBound)...\(range.upperBound)")
        default:
            throw .invalid("\(field) must be an integer in \(range.lowerBound)...\(range.upperBound)")
        }
    }

    private static func rejectUnknown(
        _ members: [String: JSONValue],
        allowed: Set<String>,
        in prefix: String
    ) throws(HeraldError) {
        if let unknown = members.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw .invalid(
                "\(prefix)\(unknown) is not a known field (known: \(allowed.sorted().joined(separator: ", ")))"
            )
        }
    }
}

/// Standard Webhooks secrets: `whsec_` followed by base64 of 24 to 64 random bytes.
package enum WebhookSecret {
    /// A fresh secret: `whsec_` and base64 of 32 random bytes.
    package static func generate() -> String {
        "whsec_" + Data(randomBytes(32)).base64EncodedString()
    }

    package static func isValid(_ secret: String) -> Bool {
        guard secret.hasPrefix("whsec_"), let bytes = decodeBase64(String(secret.dropFirst(6))) else { return false }
        return (24...64).contains(bytes.count)
    }
}

private func decodeBase64(_ text: String) -> [UInt8]? {
    Data(base64Encoded: text).map { [UInt8]($0) }
}
