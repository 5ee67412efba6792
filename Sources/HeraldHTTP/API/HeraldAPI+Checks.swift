internal import Foundation
internal import HTTPTypes
internal import HeraldAccess
internal import HeraldCore
internal import HeraldHub
internal import HeraldRunner
internal import HeraldStore
internal import Hummingbird

extension HeraldAPI {
    func registerChecks<Context: RequestContext & RemoteAddressRequestContext>(on router: Router<Context>) {
        router.post("/api/v1/checks") { request, context in
            try await createCheck(request, from: clientAddress(request, context))
        }
        router.get("/api/v1/checks") { request, _ in try await listChecks(request) }
        router.get("/api/v1/checks/{id}") { request, context in
            let id = try checkID(context)
            _ = try await reader(request, of: id.channel)
            return try await getCheck(request, id: id)
        }
        router.delete("/api/v1/checks/{id}") { request, context in
            try await cancelCheck(request, id: try checkID(context))
        }
        router.post("/api/v1/checks/{id}/complete") { request, context in
            try await completeCheck(request, id: try checkID(context))
        }
        router.get("/api/v1/checks/{id}/events") { request, context in
            let id = try checkID(context)
            _ = try await reader(request, of: id.channel)
            guard let check = try await store.check(id) else { throw HeraldError.notFound("no check with id \(id)") }
            return try await pollChannel(request, channel: id.channel, check: check)
        }
    }

    private func checkID(_ context: some RequestContext) throws(HeraldError) -> CheckID {
        let text = context.parameters.get("id") ?? ""
        guard let id = CheckID(text) else { throw .notFound("no check with id \(text)") }
        return id
    }

    // MARK: Create

    private func createCheck(_ request: Request, from address: String?) async throws -> Response {
        let principal = try await principal(request)
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
        let spec = try CheckSpec.validate(body)
        try access.authorizeCreate(spec, by: principal)
        try access.limits.take(.creates, by: principal, address: address)
        let idempotency = try request.headers[.idempotencyKey].map { key throws(HeraldError) in
            try IdempotencyKey(validating: key, field: "Idempotency-Key", body: body)
        }
        let (owner, cancelToken) = access.owner(for: principal)
        let creation = try await checks.create(spec, idempotency: idempotency, owner: owner)
        var headers = HTTPFields()
        headers[.location] = "/api/v1/checks/\(creation.check.id)"
        headers[.eTag] = "\"\(creation.check.version)\""
        if !creation.isNew { headers[.idempotentReplayed] = "true" }
        return jsonResponse(
            .accepted,
            creation.check.createdJSON(cancelToken: creation.isNew ? cancelToken : nil),
            headers: headers
        )
    }

    // MARK: Read: polling and long polling

    private func getCheck(_ request: Request, id: CheckID) async throws -> Response {
        let callback = try request.jsonpCallback(enabled: configuration.jsonp)
        let wait = try request.waitDuration(cap: configuration.maxWait)
        let knownVersion = request.headers[.ifNoneMatch].flatMap(Self.version(fromETag:))
        var check = try await requireCheck(id)
        // A long poll answers once the check moved past what the client has seen.
        let isNews = { (check: Check) in knownVersion.map { check.version != $0 } ?? check.state.isTerminal }
        if wait > .zero && !isNews(check) {
            let deadline = ContinuousClock.now.advanced(by: wait)
            let news = try await heldPoll {
                try await hub.wait(on: id.channel, until: deadline) { _ in
                    let latest = try await requireCheck(id)
                    return isNews(latest) ? latest : nil
                }
            }
            if let news { check = news } else { check = try await requireCheck(id) }
        }
        var headers = HTTPFields()
        headers[.eTag] = "\"\(check.version)\""
        if wait > .zero { headers[.preferenceApplied] = "wait=\(wait.components.seconds)" }
        if check.state == .processing { headers[.retryAfter] = String(retryAfterSeconds(check)) }
        if wait == .zero && callback == nil && knownVersion == check.version {
            return Response(status: .notModified, headers: headers)
        }
        return jsonResponse(.ok, check.json, headers: headers, callback: callback)
    }

    private func requireCheck(_ id: CheckID) async throws -> Check {
        guard let check = try await store.check(id) else { throw HeraldError.notFound("no check with id \(id)") }
        return check
    }

    /// The version in an `If-None-Match` value such as `"3"` or `W/"3"` (the first, if several).
    static func version(fromETag value: String) -> Int64? {
        let first = value.split(separator: ",").first?.trimmingCharacters(in: .whitespaces) ?? ""
        let tag = first.hasPrefix("W/") ? first.dropFirst(2) : Substring(first)
        guard tag.count >= 2, tag.first == "\"", tag.last == "\"" else { return nil }
        return Int64(tag.dropFirst().dropLast())
    }

    /// When a poller should look again: when a `delay` check is due, else soon.
    private func retryAfterSeconds(_ check: Check) -> Int64 {
        guard case .delay(let ms, _, _) = check.spec.parameters else { return 1 }
        let remaining = check.createdAt.millisecondsSince1970 + ms - Timestamp.now().millisecondsSince1970
        return min(60, max(1, (remaining + 999) / 1000))
    }

    // MARK: List

    private func listChecks(_ request: Request) async throws -> Response {
        try await requireServer(request)
        var query = CheckQuery()
        if let state = request.query("state") {
            guard let value = CheckState(rawValue: state) else {
                throw HeraldError.invalid("state must be one of processing, done, failed, canceled")
            }
            query.state = value
        }
        if let kind = request.query("kind") {
            guard let value = CheckKind(rawValue: kind) else {
                throw HeraldError.invalid("kind must be one of delay, http, tcp, external")
            }
            query.kind = value
        }
        query.limit = try pageLimit(request)
        query.cursor = request.pageCursor
        let page = try await store.checks(matching: query)
        var writer = JSONWriter()
        writer.raw("checks", jsonArray(page.checks.lazy.map(\.json)))
        writer.string("next_cursor", page.nextCursor)
        return jsonResponse(.ok, writer.result)
    }

    // MARK: End

    private func cancelCheck(_ request: Request, id: CheckID) async throws -> Response {
        let principal = try await principal(request)
        let capability = request.headers[.heraldCancelToken] ?? request.query("cancel_token")
        try access.authorizeCancel(try await requireCheck(id), by: principal, capability: capability)
        let check = try await checks.cancel(id)
        return jsonResponse(.ok, check.json, headers: [.eTag: "\"\(check.version)\""])
    }

    private func completeCheck(_ request: Request, id: CheckID) async throws -> Response {
        try await requireServer(request)
        let body = try await request.jsonBody(limit: configuration.maxBodyBytes)
        guard let members = body.objectValue else { throw HeraldError.invalid("the body must be a JSON object") }
        if let unknown = members.keys.sorted().first(where: { !["state", "result", "error"].contains($0) }) {
            throw HeraldError.invalid("\(unknown) is not a known field (known: error, result, state)")
        }
        let state: CheckState
        switch members["state"] {
        case .string("done")?: state = .done
        case .string("failed")?: state = .failed
        default: throw HeraldError.invalid("state is required: \"done\" or \"failed\"")
        }
        let error = members["error"].flatMap { $0 == .null ? nil : $0 }
        if state == .done && error != nil { throw HeraldError.invalid("error is only allowed with state \"failed\"") }
        let finish = try await checks.finish(
            id,
            as: state,
            result: members["result"].flatMap { $0 == .null ? nil : $0 },
            error: error ?? (state == .failed ? Check.errorValue(code: "failed", message: "reported failed") : nil),
            requiring: .externalKind
        )
        return try respond(to: finish, id: id)
    }

    private func respond(to finish: CheckFinish, id: CheckID) throws -> Response {
        switch finish {
        case .finished(let check, _):  // announced by CheckService
            return jsonResponse(.ok, check.json, headers: [.eTag: "\"\(check.version)\""])
        case .alreadyEnded(let check):
            throw HeraldError.conflict("check \(id) already ended as \(check.state.rawValue)")
        case .wrongKind(let check):
            throw HeraldError.conflict(
                "check \(id) is of kind \(check.spec.kind.rawValue); only external checks are completed by the API"
            )
        case .notFound:
            throw HeraldError.notFound("no check with id \(id)")
        }
    }
}
