package import HeraldCore

/// Durable state: the channel logs, checks, webhook subscriptions and the delivery queue.
///
/// Every write that belongs together is one transaction: a check's change and the event
/// announcing it commit together or not at all, so a reader never sees one without the other
/// and a crash never loses an acknowledged change; what an event causes of webhooks (a check's
/// callback delivery, an entry of the webhook event log) commits with it too. Implementations
/// are safe to call from any task; reads never wait for a long write. Events are announced
/// only after the call returns, that is, after commit (see `EventLog` in HeraldHub).
///
/// Each part that a layer uses is a protocol of its own: ``ChannelLog`` for followers and
/// publishers, ``CheckStore`` for the runner, ``SubscriptionStore`` and ``DeliveryQueue`` for
/// webhooks.
package protocol Store: ChannelLog, CheckStore, SubscriptionStore, DeliveryQueue {
    /// Removes what is past its retention: events older than the history age, empty
    /// channels, expired idempotency keys, and ended checks past their retention.
    /// - Returns: how many rows were removed.
    func prune(now: Timestamp) async throws -> Int

    /// Succeeds when the store can serve reads and writes (for `/readyz`).
    func ping() async throws
}

/// The channels' event logs: per channel, offsets that grow by one in commit order, under an
/// epoch that changes only when history was lost.
package protocol ChannelLog: Sendable {
    /// Appends an event to `channel` with the channel's next offset, creating the channel
    /// (with a fresh epoch) on first use, and trims the channel to the history bound.
    func append(type: String, data: String, to channel: ChannelName, at time: Timestamp) async throws -> Event

    /// Events of `channel` after `offset`, at most `limit`. See ``EventRead`` for `recovered`.
    ///
    /// `offset == nil` means "from now": no events, and `next` is the channel's last offset.
    /// When the position is lost, a check channel answers with its latest event alone (its
    /// current snapshot), any other channel with the oldest events it still keeps.
    func events(in channel: ChannelName, after offset: Offset?, epoch: Epoch?, limit: Int) async throws -> EventRead
}

/// Checks, each with its own channel (`check:<id>`) whose events its changes append.
package protocol CheckStore: Sendable {
    /// Creates `check` with its `check.created` event (offset 1 of a fresh channel).
    ///
    /// With an idempotency key already used by an identical request, returns that first
    /// check instead (`isNew == false`) and writes nothing.
    /// - Throws: ``HeraldError`` `.invalid` when the key was used by a different request.
    func createCheck(_ check: Check, idempotency: IdempotencyKey?) async throws -> CheckCreation

    /// The check with `id`, or `nil`.
    func check(_ id: CheckID) async throws -> Check?

    /// Checks matching `query`, newest first, one page at a time.
    func checks(matching query: CheckQuery) async throws -> CheckPage

    /// Checks still `processing`, oldest first, at most `limit` after `cursor` (nil: from the
    /// first): what the runner resumes at start-up, a page at a time.
    func processingChecks(after cursor: ProcessingCursor?, limit: Int) async throws -> ProcessingPage

    /// Ends a processing check as `state`, appending its event in the same transaction.
    ///
    /// Returns `.alreadyEnded` (writing nothing) when the check is terminal, so the runner,
    /// a cancel and an external completion can race safely: exactly one of them wins.
    func finishCheck(
        _ id: CheckID,
        as state: CheckState,
        result: JSONValue?,
        error: JSONValue?,
        at time: Timestamp,
        requiring condition: FinishCondition
    ) async throws -> CheckFinish
}

/// A client's `Idempotency-Key` and a fingerprint of the request it came with.
package struct IdempotencyKey: Sendable, Hashable {
    package var key: String
    package var fingerprint: String

    package init(key: String, fingerprint: String) {
        self.key = key
        self.fingerprint = fingerprint
    }

    /// A client's key for a create whose body is `body`: the fingerprint is of the canonical
    /// JSON text, so formatting differences do not count as another request.
    /// - Throws: `.invalid`, naming `field`, unless the key is 1 to 255 visible ASCII characters.
    package init(validating key: String, field: String, body: JSONValue) throws(HeraldError) {
        guard (1...255).contains(key.utf8.count), key.utf8.allSatisfy({ (0x21...0x7e).contains($0) }) else {
            throw .invalid("\(field) must be 1 to 255 visible ASCII characters")
        }
        // FNV-1a, 64 bits, as hex: a stable fingerprint, not a security measure.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in body.jsonText.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        self.init(key: key, fingerprint: String(hash, radix: 16))
    }
}

/// What ``Store/createCheck(_:idempotency:)`` did.
package struct CheckCreation: Sendable {
    package var check: Check
    /// The `check.created` event, when the check is new.
    package var event: Event?
    package var isNew: Bool { event != nil }

    package init(check: Check, event: Event?) {
        self.check = check
        self.event = event
    }
}

/// Which checks ``Store/finishCheck(_:as:result:error:at:requiring:)`` may end.
package enum FinishCondition: Sendable {
    /// Any processing check (the runner, a cancel).
    case any
    /// Only an `external` check (the completion API).
    case externalKind
}

/// What ``CheckStore/finishCheck(_:as:result:error:at:requiring:)`` did.
package enum CheckFinish: Sendable {
    case finished(Check, Event)
    case alreadyEnded(Check)
    case wrongKind(Check)
    case notFound

    /// Why `current` may not be finished under `condition`, or `nil` when it may: every
    /// store decides the same way, on the check it read under its write lock.
    package static func refusal(of current: Check, requiring condition: FinishCondition) -> CheckFinish? {
        if condition == .externalKind && current.spec.kind != .external { return .wrongKind(current) }
        return current.state.isTerminal ? .alreadyEnded(current) : nil
    }
}

/// A filter and a page position for listing checks.
package struct CheckQuery: Sendable, Hashable {
    package var state: CheckState?
    package var kind: CheckKind?
    package var limit: Int
    /// The opaque cursor of the previous page's last check; `nil` for the first page.
    package var cursor: String?

    package init(state: CheckState? = nil, kind: CheckKind? = nil, limit: Int = 50, cursor: String? = nil) {
        self.state = state
        self.kind = kind
        self.limit = limit
        self.cursor = cursor
    }
}

/// A page cursor as the API hands it out: a row's sequence number in base 36, opaque to clients.
package enum PageCursor {
    /// The cursor of the row numbered `sequence`.
    package static func cursor(after sequence: Int64) -> String {
        String(sequence, radix: 36)
    }

    /// The sequence number `cursor` stands for (0 without one).
    /// - Throws: ``HeraldError`` `.invalid` for a cursor Herald did not hand out.
    package static func sequence(of cursor: String?) throws -> Int64 {
        guard let cursor else { return 0 }
        guard let sequence = Int64(cursor, radix: 36), sequence > 0 else {
            throw HeraldError.invalid("cursor is not valid")
        }
        return sequence
    }
}

/// One page of checks and the cursor of the next page (`nil` on the last page).
package struct CheckPage: Sendable {
    package var checks: [Check]
    package var nextCursor: String?

    package init(checks: [Check], nextCursor: String?) {
        self.checks = checks
        self.nextCursor = nextCursor
    }
}

/// How much history a channel keeps for resume, and how long ended checks are kept.
package struct RetentionConfiguration: Sendable, Hashable {
    /// Events kept per channel (`history-max-events`, `HERALD_HISTORY_MAX_EVENTS`, default 1000).
    package var maxEventsPerChannel: Int
    /// Age past which events are removed (`history-max-age`, `HERALD_HISTORY_MAX_AGE`, default 86400 s).
    package var maxEventAge: Duration
    /// Age past which ended checks are removed (`check-retention`, `HERALD_CHECK_RETENTION`, default 7 days).
    package var checkRetention: Duration
    /// How long an `Idempotency-Key` is remembered: 24 hours.
    package var idempotencyKeyLifetime: Duration
    /// Time between two passes of the janitor (`janitor-interval`, `HERALD_JANITOR_INTERVAL`,
    /// default 60 s).
    package var janitorInterval: Duration

    package init(
        maxEventsPerChannel: Int = 1000,
        maxEventAge: Duration = .seconds(86_400),
        checkRetention: Duration = .seconds(7 * 86_400),
        idempotencyKeyLifetime: Duration = .seconds(86_400),
        janitorInterval: Duration = .seconds(60)
    ) {
        self.janitorInterval = janitorInterval
        self.maxEventsPerChannel = maxEventsPerChannel
        self.maxEventAge = maxEventAge
        self.checkRetention = checkRetention
        self.idempotencyKeyLifetime = idempotencyKeyLifetime
    }
}

/// How hard a commit is pushed to disk (`durability`, `HERALD_DURABILITY`, default `normal`).
package enum Durability: String, Sendable, CaseIterable {
    /// A commit survives a crash or `kill -9` of Herald; an OS crash or power loss may lose the
    /// last few commits, never corrupt the store (SQLite `synchronous=NORMAL`).
    case normal
    /// Every commit is on disk before it is acknowledged (SQLite `synchronous=FULL`).
    case full
}

/// Where a page of processing checks ended; opaque to callers.
public struct ProcessingCursor: Sendable, Hashable {
    package let sequence: Int64
    package init(sequence: Int64) { self.sequence = sequence }
}

/// One page of processing checks, and where the next begins (nil: this was the last).
public struct ProcessingPage: Sendable {
    package var checks: [Check]
    package var next: ProcessingCursor?
    package init(checks: [Check], next: ProcessingCursor?) {
        self.checks = checks
        self.next = next
    }
}
