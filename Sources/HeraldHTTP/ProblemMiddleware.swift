internal import HeraldCore
package import Hummingbird
package import Logging
internal import NIOHTTP1

/// Turns every error into a problem document, so no answer is ever a bare 500 or an HTML page.
///
/// ``HeraldError``s map through ``Problem/init(_:)``; Hummingbird's own errors (no route,
/// body too large) keep their status; anything else is logged with its request and answered
/// as a generic 500 that reveals nothing internal.
package struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    package init(logger: Logger) { self.logger = logger }

    package func handle(
        _ request: Request,
        context: Context,
        next: (Request, Context) async throws -> Response
    )
        async throws -> Response
    {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let problem as Problem {
            response = try problem.response(from: request, context: context)
        } catch let error as HeraldError {
            if error.code == .internal { logger.error("internal error", metadata: ["error": "\(error)"]) }
            response = try Problem(error).response(from: request, context: context)
        } catch let error as HTTPError {
            let problem: Problem
            switch error.status {
            case .notFound:
                problem = Problem(
                    status: .notFound,
                    code: "not-found",
                    detail: "no route for \(request.method) \(request.uri.path)"
                )
            case .contentTooLarge:
                problem = Problem(
                    status: .contentTooLarge,
                    code: "too-large",
                    detail: "the body is larger than the limit"
                )
            default:
                problem = Problem(
                    status: error.status,
                    code: "http-\(error.status.code)",
                    detail: error.body ?? error.status.reasonPhrase
                )
            }
            response = try problem.response(from: request, context: context)
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as HTTPParserError {
            // The body's framing was broken (a chunk size `zz`, an unknown transfer coding):
            // the client's fault, and the connection cannot be reused.
            var problem = Problem(
                status: .badRequest,
                code: "malformed-request",
                detail: "the request body is not well framed: \(error)"
            )
            problem.headers[.connection] = "close"
            response = try problem.response(from: request, context: context)
        } catch {
            response = try Problem(other: error, about: ["path": "\(request.uri.path)"], logger: logger)
                .response(from: request, context: context)
        }
        response.headers[.xContentTypeOptions] = "nosniff"
        return response
    }
}
