/// An error that crosses a module boundary: a stable code, a message meant for the client
/// (for client errors) or for the log (for internal ones), and an optional cause.
///
/// Each edge (HTTP, later WebSocket and gRPC) maps ``Code`` to its own status in one table.
package struct HeraldError: Error, Sendable, CustomStringConvertible {
    /// A stable, low-cardinality code, also used as a metrics label and in problem `type`s.
    package struct Code: Sendable, Hashable, CustomStringConvertible {
        package let rawValue: String
        private init(_ rawValue: String) { self.rawValue = rawValue }
        package var description: String { rawValue }
        /// The code as the WebSocket `error` op and gRPC `CommandError` carry it: `token_expired`.
        package var opCode: String { String(rawValue.map { $0 == "-" ? "_" : $0 }) }

        /// The request body is not well-formed (malformed JSON, bad query syntax).
        package static let malformed = Code("malformed")
        /// The request is well-formed but a value is not acceptable.
        package static let invalid = Code("invalid")
        package static let notFound = Code("not-found")
        /// The request conflicts with the resource's state (a second completion, a canceled check).
        package static let conflict = Code("conflict")
        package static let unauthorized = Code("unauthorized")
        /// A client token is needed (the channel is not public, or the action needs a grant).
        package static let tokenRequired = Code("token-required")
        /// A client token is malformed, badly signed, or for another audience or issuer.
        package static let tokenInvalid = Code("token-invalid")
        /// A client token is past its `exp`.
        package static let tokenExpired = Code("token-expired")
        /// A valid token (or none) that does not grant reading or publishing to the channel.
        package static let channelForbidden = Code("channel-forbidden")
        /// A valid credential that does not grant the action (creating or cancelling a check).
        package static let forbidden = Code("forbidden")
        /// The client is over one of its rate limits; `retryAfter` says when to come back.
        package static let rateLimited = Code("rate-limited")
        package static let tooLarge = Code("too-large")
        package static let unsupportedMediaType = Code("unsupported-media-type")
        /// A bounded queue is full; retry later.
        package static let overloaded = Code("overloaded")
        /// The server is shutting down or not ready.
        package static let unavailable = Code("unavailable")
        /// A bug or a failure of a dependency; the message is for the log only.
        package static let `internal` = Code("internal")
    }

    package var code: Code
    package var message: String
    package var cause: (any Error & Sendable)?
    /// Whole seconds after which a retry may succeed (`Retry-After`), for rate limits and caps.
    package var retryAfter: Int?

    package init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil, retryAfter: Int? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
        self.retryAfter = retryAfter
    }

    package var description: String {
        cause.map { "\(code): \(message) (\($0))" } ?? "\(code): \(message)"
    }

    package static func invalid(_ message: String) -> HeraldError { HeraldError(.invalid, message) }
    package static func notFound(_ message: String) -> HeraldError { HeraldError(.notFound, message) }
    package static func conflict(_ message: String) -> HeraldError { HeraldError(.conflict, message) }
    package static func malformed(_ message: String) -> HeraldError { HeraldError(.malformed, message) }
    package static func unauthorized(_ message: String) -> HeraldError { HeraldError(.unauthorized, message) }
    package static func tokenInvalid(_ message: String) -> HeraldError { HeraldError(.tokenInvalid, message) }
}

/// A dependency's error that means one of Herald's codes: a lost database connection means
/// `unavailable` (retry shortly), not `internal`. Every edge answers it as that code.
package protocol HeraldErrorConvertible: Error {
    /// The code this error means, or `nil` when it is internal after all.
    var heraldError: HeraldError? { get }
}

extension HeraldError {
    /// `error` as a ``HeraldError``: itself, or what a ``HeraldErrorConvertible`` means.
    package init?(_ error: any Error) {
        if let error = error as? HeraldError {
            self = error
        } else if let mapped = (error as? any HeraldErrorConvertible)?.heraldError {
            self = mapped
        } else {
            return nil
        }
    }
}
