package import Hummingbird

extension Router {
    /// Answers every method a known path does not serve: `405` with `Allow`, or for
    /// `OPTIONS` a `204` with `Allow`. Call it after every route is added; `HEAD` is served
    /// wherever `GET` is (the router's `autoGenerateHeadEndpoints` option).
    package func answerUnservedMethods() {
        let served = Dictionary(grouping: routes, by: { $0.path.description })
        for (_, routes) in served {
            var methods = Set(routes.map(\.method))
            if methods.contains(.get) { methods.insert(.head) }
            let allow = (methods.union([.options])).map(\.rawValue).sorted().joined(separator: ", ")
            let path = routes[0].path
            for method in Self.methodsAnswered where !methods.contains(method) {
                on(path, method: method) { request, _ -> Response in
                    if method == .options { return Response(status: .noContent, headers: [.allow: allow]) }
                    throw Problem(
                        status: .methodNotAllowed,
                        code: "method-not-allowed",
                        detail: "\(request.uri.path) serves \(allow)",
                        headers: [.allow: allow]
                    )
                }
            }
        }
    }

    /// Every method a client may try on a known path (QUERY is the draft safe method with a body).
    private static var methodsAnswered: [HTTPRequest.Method] {
        [.get, .head, .post, .put, .patch, .delete, .options, .trace] + ["QUERY"].compactMap { HTTPRequest.Method($0) }
    }
}
