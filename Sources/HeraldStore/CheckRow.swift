internal import Foundation
package import HeraldCore

/// A check as a store keeps it: one column per field, JSON as text, times in milliseconds.
/// Every store reads and writes checks through it, so they store the same thing.
package struct CheckRow: Sendable {
    package var id: String
    package var kind: String
    package var params: String
    package var state: String
    package var result: String?
    package var error: String?
    package var version: Int64
    package var createdAt: Int64
    package var updatedAt: Int64
    package var completedAt: Int64?
    package var callbackURL: String?
    package var callbackSecret: String?
    package var callbackEvents: String
    package var callbackStopped: Bool
    package var ownerSubject: String?
    package var cancelDigest: String?

    package init(
        id: String,
        kind: String,
        params: String,
        state: String,
        result: String?,
        error: String?,
        version: Int64,
        createdAt: Int64,
        updatedAt: Int64,
        completedAt: Int64?,
        callbackURL: String?,
        callbackSecret: String?,
        callbackEvents: String,
        callbackStopped: Bool,
        ownerSubject: String?,
        cancelDigest: String?
    ) {
        self.id = id
        self.kind = kind
        self.params = params
        self.state = state
        self.result = result
        self.error = error
        self.version = version
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.completedAt = completedAt
        self.callbackURL = callbackURL
        self.callbackSecret = callbackSecret
        self.callbackEvents = callbackEvents
        self.callbackStopped = callbackStopped
        self.ownerSubject = ownerSubject
        self.cancelDigest = cancelDigest
    }

    /// The columns of `check`.
    package init(_ check: Check) {
        self.init(
            id: check.id.rawValue,
            kind: check.spec.kind.rawValue,
            params: check.spec.paramsJSON.jsonText,
            state: check.state.rawValue,
            result: check.result?.jsonText,
            error: check.error?.jsonText,
            version: check.version,
            createdAt: check.createdAt.millisecondsSince1970,
            updatedAt: check.updatedAt.millisecondsSince1970,
            completedAt: check.completedAt?.millisecondsSince1970,
            callbackURL: check.spec.callbackURL,
            callbackSecret: check.spec.callbackSecret,
            callbackEvents: check.spec.callbackEvents.rawValue,
            callbackStopped: check.spec.callbackStopped,
            ownerSubject: check.owner?.subject,
            cancelDigest: check.owner?.cancelDigest
        )
    }

    /// The check these columns hold.
    /// - Throws: ``HeraldError`` `.internal` when they do not make a valid check.
    package func check() throws -> Check {
        func json(_ text: String?) throws -> JSONValue? {
            guard let text else { return nil }
            return try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))
        }
        var request: [String: JSONValue] = ["kind": .string(kind), "params": try json(params) ?? .null]
        if let callbackURL { request["callback_url"] = .string(callbackURL) }
        if let callbackSecret { request["callback_secret"] = .string(callbackSecret) }
        if callbackURL != nil { request["callback_events"] = .string(callbackEvents) }
        guard let checkID = CheckID(id), let state = CheckState(rawValue: state) else {
            throw HeraldError(.internal, "stored check \(id) is not valid")
        }
        var spec = try CheckSpec.validate(.object(request))
        spec.callbackStopped = callbackStopped
        var check = Check(id: checkID, spec: spec, createdAt: Timestamp(millisecondsSince1970: createdAt))
        check.state = state
        check.result = try json(result)
        check.error = try json(error)
        check.version = version
        check.updatedAt = Timestamp(millisecondsSince1970: updatedAt)
        check.completedAt = completedAt.map(Timestamp.init(millisecondsSince1970:))
        if let cancelDigest { check.owner = CheckOwner(subject: ownerSubject, cancelDigest: cancelDigest) }
        return check
    }
}
