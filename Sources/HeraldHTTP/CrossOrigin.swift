internal import HTTPTypes
package import Hummingbird

/// CORS for `allowed-origins`, through Hummingbird's `CORSMiddleware`: a page from an allowed
/// origin gets its preflight answered (204) and `Access-Control-Allow-Origin` on every answer;
/// any other origin gets no CORS header at all, so its browser keeps the answer from it.
///
/// Tokens, not cookies, carry authority, so credentials are never allowed. `CORSMiddleware`
/// puts `Access-Control-Expose-Headers` on preflights only, where browsers ignore it; this
/// adds it to the answers themselves, so a page reads `ETag`, `Location`, `Retry-After`, `Link`.
package struct CrossOrigin<Context: RequestContext>: RouterMiddleware {
    static var exposed: [String] {
        [
            "ETag", "Location", "Retry-After", "Link", "Idempotent-Replayed", "Preference-Applied", "WWW-Authenticate",
            "grpc-status", "grpc-message",
        ]
    }

    let allowed: Set<String>?
    let cors: CORSMiddleware<Context>

    /// - Parameter allowed: the origins allowed; nil: any.
    package init(allowed: Set<String>?) {
        self.allowed = allowed
        self.cors = CORSMiddleware(
            allowOrigin: allowed == nil ? .all : .originBased,
            allowHeaders: [
                .accept, .authorization, .contentType, .origin, .ifNoneMatch, .cacheControl,
                HTTPField.Name("Idempotency-Key")!, HTTPField.Name("Last-Event-ID")!, HTTPField.Name("Prefer")!,
                HTTPField.Name("Herald-Cancel-Token")!, HTTPField.Name("X-Grpc-Web")!,
                HTTPField.Name("X-User-Agent")!,
            ],
            allowMethods: [.get, .post, .put, .delete, .head, .options],
            exposedHeaders: Self.exposed,
            maxAge: .seconds(600)
        )
    }

    package func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard let origin = request.headers[.origin], allowed.map({ $0.contains(origin) }) ?? true else {
            return try await next(request, context)
        }
        var response = try await cors.handle(request, context: context, next: next)
        if request.method != .options {
            response.headers[.accessControlExposeHeaders] = Self.exposed.joined(separator: ", ")
        }
        return response
    }
}
