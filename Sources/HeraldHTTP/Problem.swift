package import HTTPTypes
package import HeraldCore
package import Hummingbird
package import Logging
internal import NIOCore

/// An RFC 9457 problem document, the body of every error answer.
///
/// ``HeraldError`` codes map to statuses in ``status(for:)``, the one table for HTTP.
package struct Problem: HTTPResponseError, Sendable {
    package var status: HTTPResponse.Status
    package var code: String
    package var detail: String
    package var headers: HTTPFields

    package init(status: HTTPResponse.Status, code: String, detail: String, headers: HTTPFields = [:]) {
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
    }

    package init(_ error: HeraldError) {
        var headers = HTTPFields()
        if let seconds = error.retryAfter ?? (error.code == .overloaded ? 1 : nil) {
            headers[.retryAfter] = String(seconds)
        }
        switch error.code {
        case .unauthorized, .tokenRequired: headers[.wwwAuthenticate] = "Bearer realm=\"herald\""
        case .tokenInvalid: headers[.wwwAuthenticate] = "Bearer realm=\"herald\", error=\"invalid_token\""
        case .tokenExpired:
            headers[.wwwAuthenticate] =
                "Bearer realm=\"herald\", error=\"invalid_token\", error_description=\"expired\""
        default: break
        }
        self.init(
            status: Self.status(for: error.code),
            code: error.code.rawValue,
            detail: error.message,
            headers: headers
        )
    }

    /// The problem for an error that is neither a ``HeraldError`` nor Hummingbird's: the
    /// ``HeraldError`` it maps to (a store that cannot be reached: `503`), logged as a warning;
    /// else a generic 500 that reveals nothing internal, the error logged with `about` (what
    /// was asked: a path, a channel).
    package init(other error: any Error, about: Logger.Metadata, logger: Logger) {
        let metadata = about.merging(["error": "\(error)"]) { $1 }
        if let mapped = HeraldError(error) {
            logger.warning("\(mapped.code)", metadata: metadata)
            self.init(mapped)
        } else {
            logger.error("unexpected error", metadata: metadata)
            self.init(status: .internalServerError, code: "internal", detail: "an internal error occurred")
        }
    }

    /// The HTTP status of each error code.
    package static func status(for code: HeraldError.Code) -> HTTPResponse.Status {
        switch code {
        case .malformed: .badRequest
        case .invalid: .unprocessableContent
        case .notFound: .notFound
        case .conflict: .conflict
        case .unauthorized, .tokenRequired, .tokenInvalid, .tokenExpired: .unauthorized
        case .channelForbidden, .forbidden: .forbidden
        case .rateLimited: .tooManyRequests
        case .tooLarge: .contentTooLarge
        case .unsupportedMediaType: .unsupportedMediaType
        case .overloaded: .tooManyRequests
        case .unavailable: .serviceUnavailable
        default: .internalServerError
        }
    }

    package var json: String {
        var writer = JSONWriter()
        writer.string("type", "urn:herald:problem:\(code)")
        writer.string("title", status.reasonPhrase)
        writer.int("status", Int64(status.code))
        writer.string("detail", detail)
        writer.string("code", code)
        return writer.result
    }

    /// The answer's headers: the problem's own, its content type, and no caching.
    package var responseHeaders: HTTPFields {
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        headers[.cacheControl] = "no-store"
        return headers
    }

    package func response(from request: Request, context: some RequestContext) throws -> Response {
        Response(status: status, headers: responseHeaders, body: .init(byteBuffer: ByteBuffer(string: json)))
    }
}
