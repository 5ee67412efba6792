package import Hummingbird

/// `HEAD` of a stream: the stream's headers, without the `Content-Length: 0` that the router's
/// generated `HEAD` adds (a stream's `GET` has no length: its body is open-ended). It wraps the
/// router's responder, because the generated `HEAD` empties the body outside every middleware.
/// Streams are known by their `X-Accel-Buffering: no` (``StreamFormat/headers``).
package struct StreamHeadResponder<Inner: HTTPResponder>: HTTPResponder {
    let inner: Inner

    package init(_ inner: Inner) { self.inner = inner }

    package func respond(to request: Request, context: Inner.Context) async throws -> Response {
        var response = try await inner.respond(to: request, context: context)
        if request.method == .head, response.headers[.xAccelBuffering] == "no" {
            response.body = ResponseBody { writer in try await writer.finish(nil) }
        }
        return response
    }
}
