internal import HTTPTypes
internal import HeraldCore
internal import HeraldNet
internal import HeraldRunner
internal import HeraldStore
internal import Hummingbird

extension HeraldAPI {
    /// REST-hooks at `/api/v1/subscription/` and the delivery log at `/api/v1/deliveries`;
    /// every route needs the server API key. The router ignores a trailing slash, so each
    /// route answers with and without one.
    func registerWebhooks<Context: RequestContext & RemoteAddressRequestContext>(on router: Router<Context>) {
        router.get("/api/v1/subscription") { request, _ in try await listSubscriptions(request) }
        router.post("/api/v1/subscription") { request, _ in try await createSubscription(request) }
        router.get("/api/v1/subscription/{id}") { request, context in
            try await requireServer(request)
            return jsonResponse(.ok, try await existingSubscription(context).json())
        }
        router.put("/api/v1/subscription/{id}") { request, context in try await updateSubscription(request, context) }
        router.delete("/api/v1/subscription/{id}") { request, context in
            try await requireServer(request)
            let id = context.parameters.get("id") ?? ""
            guard try await store.deleteSubscription(id, at: .now()) else {
                throw HeraldError.notFound("no subscription with id \(id)")
            }
            return Response(status: .noContent)
        }
        router.post("/api/v1/subscription/{id}/replay") { request, context in
            try await replay(request, context)
        }
        router.post("/api/v1/subscription/{id}/rotate") { request, context in
            try await rotateSecret(request, context)
        }
        router.get("/api/v1/deliveries") { request, _ in try await listDeliveries(request) }
        router.get("/api/v1/deliveries/{id}") { request, context in
            try await requireServer(request)
            let id = context.parameters.get("id") ?? ""
            guard let (delivery, attempts) = try await store.delivery(id) else {
                throw HeraldError.notFound("no delivery with id \(id)")
            }
            return jsonResponse(.ok, delivery.json(attempts: attempts))
        }
        router.post("/api/v1/deliveries/{id}/retry") { request, context in
            try await requireServer(request)
            let id = context.parameters.get("id") ?? ""
            guard let delivery = try await store.retryDelivery(id, at: .now()) else {
                throw HeraldError.notFound("no delivery with id \(id)")
            }
            return jsonResponse(.accepted, delivery.json())
        }
    }

    private func existingSubscription(_ context: some RequestContext) async throws -> Subscription {
        let id = context.parameters.get("id") ?? ""
        guard let subscription = try await store.subscription(id) else {
            throw HeraldError.notFound("no subscription with id \(id)")
        }
        return subscription
    }

    private func listSubscriptions(_ request: Request) async throws -> Response {
        try await requireServer(request)
        let page = try await store.subscriptions(limit: try pageLimit(request), cursor: request.pageCursor)
        var writer = JSONWriter()
        writer.raw("subscriptions", jsonArray(page.items.lazy.map { $0.json() }))
        writer.string("next_cursor", page.next)
        return jsonResponse(.ok, writer.result)
    }

    private func createSubscription(_ request: Request) async throws -> Response {
        try await requireServer(request)
        let fields = try await subscriptionFields(request)
        let subscription = Subscription(
            id: "sub_" + randomToken(bytes: 12),
            targetURL: fields.targetURL,
            event: fields.event,
            secret: fields.secret ?? WebhookSecret.generate(),
            createdAt: .now()
        )
        try await store.createSubscription(subscription)
        return jsonResponse(
            .created,
            subscription.json(withSecret: true),
            headers: [.location: "/api/v1/subscription/\(subscription.id)/"]
        )
    }

    private func updateSubscription(_ request: Request, _ context: some RequestContext) async throws -> Response {
        try await requireServer(request)
        let id = context.parameters.get("id") ?? ""
        let fields = try await subscriptionFields(request)
        guard
            let subscription = try await store.updateSubscription(
                id,
                targetURL: fields.targetURL,
                event: fields.event,
                secret: fields.secret,
                overlap: configuration.secretOverlap,
                at: .now()
            )
        else { throw HeraldError.notFound("no subscription with id \(id)") }
        return jsonResponse(.ok, subscription.json())
    }

    /// `{"secret"?, "overlap"?}`: a new secret (generated when absent) that signs from now on;
    /// the old one keeps signing beside it for `overlap` seconds (default
    /// `webhook-secret-overlap`, 0 ends it at once). The answer shows the new secret, once.
    private func rotateSecret(_ request: Request, _ context: some RequestContext) async throws -> Response {
        try await requireServer(request)
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes, emptyAs: .object([:]))
        guard let members = body.objectValue else {
            throw HeraldError.invalid("the body must be a JSON object, not \(body.typeName)")
        }
        if let unknown = members.keys.sorted().first(where: { !["secret", "overlap"].contains($0) }) {
            throw HeraldError.invalid("\(unknown) is not a known field (known: overlap, secret)")
        }
        let secret = try Self.secret(members["secret"]) ?? WebhookSecret.generate()
        var overlap = configuration.secretOverlap
        switch members["overlap"] {
        case nil, .null?: break
        case .int(let seconds)? where (0...604_800).contains(seconds): overlap = .seconds(seconds)
        default: throw HeraldError.invalid("overlap must be an integer number of seconds in 0...604800")
        }
        let id = context.parameters.get("id") ?? ""
        guard let subscription = try await store.rotateSecret(id, to: secret, overlap: overlap, at: .now()) else {
            throw HeraldError.notFound("no subscription with id \(id)")
        }
        return jsonResponse(.ok, subscription.json(withSecret: true))
    }

    private static func secret(_ value: JSONValue?) throws(HeraldError) -> String? {
        switch value {
        case nil, .null?: return nil
        case .string(let secret)? where WebhookSecret.isValid(secret): return secret
        default: throw .invalid("secret must be 'whsec_' followed by base64 of 24 to 64 bytes")
        }
    }

    /// Validates `{"target_url", "event", "secret"?}`; the target is checked by the SSRF guard.
    private func subscriptionFields(
        _ request: Request
    ) async throws -> (
        targetURL: String, event: String, secret: String?
    ) {
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
        guard let members = body.objectValue else {
            throw HeraldError.invalid("the body must be a JSON object, not \(body.typeName)")
        }
        if let unknown = members.keys.sorted().first(where: { !["target_url", "event", "secret"].contains($0) }) {
            throw HeraldError.invalid("\(unknown) is not a known field (known: event, secret, target_url)")
        }
        guard case .string(let targetURL)? = members["target_url"] else {
            throw HeraldError.invalid("target_url is required: an http or https URL")
        }
        let url = try TargetURL(targetURL, field: "target_url")
        guard case .string(let event)? = members["event"], Self.isEventPattern(event) else {
            throw HeraldError.invalid("event is required: an event type (check.done), a pattern (check.*) or *")
        }
        let secret = try Self.secret(members["secret"])
        _ = try await checks.resolver.resolve(url.host)
        return (targetURL, event, secret)
    }

    static func isEventPattern(_ event: String) -> Bool {
        event == "*" || Event.isValidType(event.hasSuffix(".*") ? String(event.dropLast(2)) : event)
    }

    private func replay(_ request: Request, _ context: some RequestContext) async throws -> Response {
        try await requireServer(request)
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
        guard case .string(let text)? = body.objectValue?["since"], let since = Timestamp(rfc3339: text) else {
            throw HeraldError.invalid("since is required: an RFC 3339 time")
        }
        let id = context.parameters.get("id") ?? ""
        guard let queued = try await store.replay(subscription: id, since: since, at: .now()) else {
            throw HeraldError.notFound("no subscription with id \(id)")
        }
        return jsonResponse(.accepted, #"{"queued":\#(queued)}"#)
    }

    private func listDeliveries(_ request: Request) async throws -> Response {
        try await requireServer(request)
        var query = DeliveryQuery(limit: try pageLimit(request), cursor: request.pageCursor)
        query.subscriptionID = request.query("subscription_id")
        query.checkID = request.query("check_id")
        if let state = request.query("state") {
            guard let value = Delivery.State(rawValue: state) else {
                throw HeraldError.invalid("state must be one of pending, delivered, failed")
            }
            query.state = value
        }
        let page = try await store.deliveries(matching: query)
        var writer = JSONWriter()
        writer.raw("deliveries", jsonArray(page.items.lazy.map { $0.json() }))
        writer.string("next_cursor", page.next)
        return jsonResponse(.ok, writer.result)
    }

    /// `?limit=` of a listing: 1 to 500, 50 when absent.
    func pageLimit(_ request: Request) throws(HeraldError) -> Int {
        guard let text = request.query("limit") else { return 50 }
        guard let value = Int(text), (1...500).contains(value) else {
            throw .invalid("limit must be an integer in 1...500")
        }
        return value
    }
}
