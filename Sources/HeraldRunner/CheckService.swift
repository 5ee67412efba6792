internal import Foundation
package import HeraldCore
package import HeraldHub
package import HeraldNet
package import HeraldStore

/// Creating and cancelling a check, the same for every transport (HTTP, the WebSocket
/// `create_check` op, gRPC).
///
/// Admission (the runner's queue bound) and the SSRF guard (on the check's target and on its
/// `callback_url`, as for a subscription's target) run before anything is written; the
/// check and its first event commit together (through the ``EventLog``, which announces it);
/// only then is the check handed to the runner.
package struct CheckService: Sendable {
    let events: EventLog
    let runner: CheckRunner
    package let resolver: TargetResolver

    package init(events: EventLog, runner: CheckRunner, resolver: TargetResolver) {
        self.events = events
        self.runner = runner
        self.resolver = resolver
    }

    /// Creates the check `spec` describes, or returns the first one created with `idempotency`.
    /// - Throws: ``HeraldError`` `.overloaded` when the runner's queue is full, `.invalid`
    ///   when a target is refused or an idempotency key is reused with another body.
    /// - Parameter owner: who created it, for cancelling (see `Access.owner(for:)`).
    package func create(
        _ spec: CheckSpec,
        idempotency: IdempotencyKey?,
        owner: CheckOwner? = nil
    ) async throws -> CheckCreation {
        var spec = spec
        try runner.admit(spec)
        switch spec.parameters {
        case .http(let url, _, _, _):
            _ = try await resolver.resolve(try TargetURL(url, field: "params.url").host)
        case .tcp(let host, _, _):
            _ = try await resolver.resolve(host)
        case .delay, .external:
            break
        }
        if let callback = spec.callbackURL {
            _ = try await resolver.resolve(try TargetURL(callback, field: "callback_url").host, for: "callback_url")
        }
        if spec.callbackURL != nil && spec.callbackSecret == nil {
            spec.callbackSecret = WebhookSecret.generate()
        }
        let creation = try await events.createCheck(
            Check(id: .random(), spec: spec, createdAt: .now(), owner: owner),
            idempotency: idempotency
        )
        if creation.isNew { runner.submit(creation.check) }
        return creation
    }

    /// Ends a processing check from outside the runner (a client's cancel, an external
    /// completion): commits it, announces it, and drops its timer.
    package func finish(
        _ id: CheckID,
        as state: CheckState,
        result: JSONValue?,
        error: JSONValue?,
        requiring condition: FinishCondition
    ) async throws -> CheckFinish {
        let finish = try await events.finishCheck(id, as: state, result: result, error: error, requiring: condition)
        if case .finished = finish { runner.forget(id) }
        return finish
    }

    /// Cancels a check that is still processing and announces it.
    /// - Throws: ``HeraldError`` `.notFound`, or `.conflict` once the check has ended.
    package func cancel(_ id: CheckID) async throws -> Check {
        let finish = try await finish(
            id,
            as: .canceled,
            result: nil,
            error: Check.errorValue(code: "canceled", message: "canceled by a client"),
            requiring: .any
        )
        switch finish {
        case .finished(let check, _):
            return check
        case .alreadyEnded(let check), .wrongKind(let check):
            throw HeraldError.conflict("check \(id) already ended as \(check.state.rawValue)")
        case .notFound:
            throw HeraldError.notFound("no check with id \(id)")
        }
    }
}
