/// Where a check is in its life: `processing` until it ends as one of the terminal states.
package enum CheckState: String, Sendable, Hashable, CaseIterable {
    case processing, done, failed, canceled

    package var isTerminal: Bool { self != .processing }

    /// The event type announcing a change into this state.
    package var eventType: String {
        switch self {
        case .processing: "check.updated"
        case .done: "check.done"
        case .failed: "check.failed"
        case .canceled: "check.canceled"
        }
    }
}

/// What a check remembers of its creator, for cancelling: the creating token's `sub`, and
/// the SHA-256 (hex) of the cancel capability its create answer carried.
package struct CheckOwner: Sendable, Hashable {
    package var subject: String?
    package var cancelDigest: String

    package init(subject: String?, cancelDigest: String) {
        self.subject = subject
        self.cancelDigest = cancelDigest
    }
}

/// The asynchronous resource: created by a client, run by the server, read by its id.
package struct Check: Sendable, Hashable {
    package var id: CheckID
    package var spec: CheckSpec
    package var state: CheckState
    package var result: JSONValue?
    package var error: JSONValue?
    /// Grows by one on every change; it is the check's `ETag`.
    package var version: Int64
    package var createdAt: Timestamp
    package var updatedAt: Timestamp
    package var completedAt: Timestamp?
    /// Who created it and the digest of its cancel capability; never part of its JSON.
    package var owner: CheckOwner?

    package init(id: CheckID, spec: CheckSpec, createdAt: Timestamp, owner: CheckOwner? = nil) {
        self.id = id
        self.spec = spec
        self.owner = owner
        self.state = .processing
        self.version = 1
        self.createdAt = createdAt
        self.updatedAt = createdAt
    }

    /// The check after it ended in `state`, one version later.
    package func finished(
        _ state: CheckState,
        result: JSONValue?,
        error: JSONValue?,
        at time: Timestamp
    ) -> Check {
        var next = self
        next.state = state
        next.result = result
        next.error = error
        next.version += 1
        next.updatedAt = time
        next.completedAt = time
        return next
    }

    /// The check as its public JSON document (the callback secret is never part of it).
    package var json: String {
        var writer = JSONWriter()
        writer.string("id", id.rawValue)
        writer.string("kind", spec.kind.rawValue)
        writer.value("params", spec.paramsJSON)
        writer.string("state", state.rawValue)
        writer.value("result", result)
        writer.value("error", error)
        writer.int("version", version)
        writer.string("created_at", createdAt.rfc3339)
        writer.string("updated_at", updatedAt.rfc3339)
        writer.string("completed_at", completedAt?.rfc3339)
        writer.string("callback_url", spec.callbackURL)
        if spec.callbackURL != nil { writer.string("callback_events", spec.callbackEvents.rawValue) }
        var links = JSONWriter()
        links.string("self", "/api/v1/checks/\(id)")
        links.string("events", "/api/v1/checks/\(id)/events")
        links.string("ws", "/api/v1/ws")
        writer.raw("links", links.result)
        return writer.result
    }

    /// The create answer: the check, plus what is never shown again: its callback secret and
    /// its cancel capability (`cancel_token`, absent from a replayed create).
    package func createdJSON(cancelToken: String?) -> String {
        guard spec.callbackSecret != nil || cancelToken != nil else { return json }
        var document = json
        document.removeLast()
        var writer = JSONWriter()
        if let secret = spec.callbackSecret { writer.string("callback_secret", secret) }
        if let cancelToken { writer.string("cancel_token", cancelToken) }
        return document + "," + writer.result.dropFirst()
    }

    /// An `error` object: `{"code": ..., "message": ...}`.
    package static func errorValue(code: String, message: String) -> JSONValue {
        .object(["code": .string(code), "message": .string(message)])
    }
}
