package import HeraldCore
internal import HeraldHooks
package import HeraldStore
internal import Testing

/// What every ``Store`` must do, whatever keeps its rows: a suite each store's tests run
/// against a fresh store of their kind (`SQLiteStoreTests`, `PostgresStoreTests`).
///
/// A store's own tests keep what only it has (its migrations, its files, its SQL plans); what a
/// caller relies on belongs here, so a second store cannot quietly mean something else.
///
/// ```swift
/// @Test(arguments: StoreConformance.logAndChecks)
/// func conformance(_ requirement: StoreConformance.Case<any ChannelLog & CheckStore>) async throws {
///     try await requirement.run { retention in try makeStore(retention) }
/// }
/// ```
package enum StoreConformance {
    /// Opens a fresh, empty store with the given retention.
    package typealias MakeStore<Subject> = @Sendable (RetentionConfiguration) async throws -> Subject

    /// One requirement, named for the test report, of a store that is a `Subject`.
    package struct Case<Subject>: Sendable, CustomTestStringConvertible {
        package let name: String
        let body: @Sendable (MakeStore<Subject>) async throws -> Void

        package var testDescription: String { name }

        package func run(_ makeStore: MakeStore<Subject>) async throws {
            try await body(makeStore)
        }
    }

    /// What the channel logs and checks must do.
    package static let logAndChecks: [Case<any ChannelLog & CheckStore>] = [
        Case(name: "creating a check writes its first event", body: creatingACheckWritesItsFirstEvent),
        Case(name: "an idempotency key returns the first check", body: anIdempotencyKeyReturnsTheFirstCheck),
        Case(name: "concurrent creates with one idempotency key make one check", body: concurrentIdempotentCreates),
        Case(name: "exactly one finish wins", body: exactlyOneFinishWins),
        Case(name: "only external checks are completed by the API", body: onlyExternalChecksAreCompletedByTheAPI),
        Case(name: "offsets grow by one and history is bounded", body: offsetsGrowByOneAndHistoryIsBounded),
        Case(name: "concurrent appends get every offset once", body: concurrentAppendsGetEveryOffsetOnce),
        Case(name: "each channel has its own epoch", body: eachChannelHasItsOwnEpoch),
        Case(name: "a lost position on a check channel gets the snapshot", body: aLostCheckPositionGetsTheSnapshot),
        Case(name: "paging walks every check newest first", body: pagingWalksEveryCheckNewestFirst),
        Case(name: "processing checks come in pages oldest first", body: processingChecksComeInPagesOldestFirst),
    ]

    /// What webhook subscriptions and the delivery queue must do.
    package static let webhooks: [Case<any Store>] = [
        Case(name: "a claim leases a delivery until the lease ends", body: aClaimLeasesADelivery),
        Case(name: "only the current lease decides", body: onlyTheCurrentLeaseDecides),
        Case(name: "a retry by hand waits for the attempt in flight", body: aRetryByHandWaitsForTheAttemptInFlight),
        Case(name: "a rotation signs with both secrets until the overlap ends", body: aRotationSignsWithBothSecrets),
        Case(name: "a check's callback is queued with its terminal event", body: aCallbackIsQueuedWithItsEvent),
        Case(name: "a subscription gets the events its pattern matches", body: aSubscriptionGetsWhatItMatches),
        Case(name: "a claim takes preferred targets first and reaches many", body: aClaimTakesPreferredTargetsFirst),
        Case(name: "a parked target's backlog waits until it is unparked", body: aParkedTargetWaits),
        Case(name: "a subscription failing too long is disabled", body: aSubscriptionFailingTooLongIsDisabled),
        Case(name: "a subscription past its lag cap is disabled with the reason", body: aLaggingSubscriptionIsDisabled),
        Case(name: "a 410 deletes the subscription", body: aGoneTargetDeletesItsSubscription),
        Case(name: "a replay queues what the subscription matched since", body: aReplayQueuesWhatItMatched),
        Case(name: "pruning removes old events and ended checks", body: pruningRemovesOldEventsAndEndedChecks),
        Case(name: "ended deliveries are pruned, pending ones stay", body: endedDeliveriesArePruned),
    ]

    // MARK: Checks

    package static func delayCheck(_ milliseconds: Int64 = 100) -> Check {
        Check(
            id: .random(),
            spec: CheckSpec(parameters: .delay(milliseconds: milliseconds, outcome: .done, result: nil)),
            createdAt: .now()
        )
    }

    static func creatingACheckWritesItsFirstEvent(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        let check = delayCheck()
        let creation = try await store.createCheck(check, idempotency: nil)
        let event = try #require(creation.event)
        #expect(event.offset == 1 && event.type == "check.created" && event.channel == check.id.channel)
        #expect(try await store.check(check.id) == check)
        let read = try await store.events(in: check.id.channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events == [event] && read.recovered && read.next == 1)
        #expect(try await store.check(CheckID.random()) == nil)
    }

    static func anIdempotencyKeyReturnsTheFirstCheck(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        let key = IdempotencyKey(key: "k1", fingerprint: "f")
        let first = try await store.createCheck(delayCheck(), idempotency: key)
        let second = try await store.createCheck(delayCheck(), idempotency: key)
        #expect(first.isNew && second.check.id == first.check.id && !second.isNew)
        await #expect(throws: HeraldError.self) {
            try await store.createCheck(delayCheck(), idempotency: IdempotencyKey(key: "k1", fingerprint: "other"))
        }
    }

    static func concurrentIdempotentCreates(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        let key = IdempotencyKey(key: "same", fingerprint: "f")
        let creations = try await withThrowingTaskGroup(of: CheckCreation.self) { group in
            for _ in 0..<6 {
                group.addTask { try await store.createCheck(delayCheck(), idempotency: key) }
            }
            return try await group.reduce(into: [CheckCreation]()) { $0.append($1) }
        }
        #expect(Set(creations.map(\.check.id)).count == 1)
        #expect(creations.filter(\.isNew).count == 1)
        var processing = 0
        var cursor: ProcessingCursor?
        repeat {
            let page = try await store.processingChecks(after: cursor, limit: 100)
            processing += page.checks.count
            cursor = page.next
        } while cursor != nil
        #expect(processing == 1)
    }

    static func exactlyOneFinishWins(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        let wins = try await withThrowingTaskGroup(of: Bool.self) { group in
            for state in [CheckState.done, .failed, .canceled, .done] {
                group.addTask {
                    let finish = try await store.finishCheck(
                        check.id,
                        as: state,
                        result: nil,
                        error: nil,
                        at: .now(),
                        requiring: .any
                    )
                    if case .finished = finish { return true }
                    return false
                }
            }
            return try await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(wins == 1)
        let stored = try #require(try await store.check(check.id))
        #expect(stored.version == 2 && stored.state.isTerminal && stored.completedAt != nil)
        let read = try await store.events(in: check.id.channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events.map(\.offset) == [1, 2])
    }

    static func onlyExternalChecksAreCompletedByTheAPI(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws
    {
        let store = try await makeStore(.init())
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        let finish = try await store.finishCheck(
            check.id,
            as: .done,
            result: nil,
            error: nil,
            at: .now(),
            requiring: .externalKind
        )
        guard case .wrongKind = finish else {
            Issue.record("a delay check was completed externally")
            return
        }
        let missing = try await store.finishCheck(
            .random(),
            as: .done,
            result: nil,
            error: nil,
            at: .now(),
            requiring: .any
        )
        guard case .notFound = missing else {
            Issue.record("a check that does not exist was finished")
            return
        }
    }

    static func pagingWalksEveryCheckNewestFirst(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        var ids: [CheckID] = []
        for _ in 0..<7 {
            let check = delayCheck()
            ids.append(check.id)
            _ = try await store.createCheck(check, idempotency: nil)
        }
        var seen: [CheckID] = []
        var cursor: String?
        repeat {
            let page = try await store.checks(matching: CheckQuery(limit: 3, cursor: cursor))
            seen += page.checks.map(\.id)
            cursor = page.nextCursor
        } while cursor != nil
        #expect(seen == ids.reversed())
    }

    static func processingChecksComeInPagesOldestFirst(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws
    {
        let store = try await makeStore(.init())
        var created: [CheckID] = []
        for _ in 0..<7 {
            let check = delayCheck()
            _ = try await store.createCheck(check, idempotency: nil)
            created.append(check.id)
        }
        _ = try await store.finishCheck(created[3], as: .done, result: nil, error: nil, at: .now(), requiring: .any)
        created.remove(at: 3)
        var seen: [CheckID] = []
        var cursor: ProcessingCursor?
        repeat {
            let page = try await store.processingChecks(after: cursor, limit: 3)
            #expect(page.checks.count <= 3)
            seen += page.checks.map(\.id)
            cursor = page.next
        } while cursor != nil
        #expect(seen == created)
    }

    // MARK: Channels

    static func offsetsGrowByOneAndHistoryIsBounded(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init(maxEventsPerChannel: 3))
        let channel = try #require(ChannelName("orders"))
        var events: [Event] = []
        for index in 1...5 {
            events.append(try await store.append(type: "t", data: "\(index)", to: channel, at: .now()))
        }
        #expect(events.map(\.offset) == [1, 2, 3, 4, 5])
        #expect(Set(events.map(\.epoch)).count == 1)
        let kept = try await store.events(in: channel, after: 2, epoch: events[0].epoch, limit: 10)
        #expect(kept.recovered && kept.events.map(\.offset) == [3, 4, 5])
        #expect(kept.events.map(\.data) == ["3", "4", "5"])
        let lost = try await store.events(in: channel, after: 1, epoch: events[0].epoch, limit: 10)
        #expect(!lost.recovered && lost.events.map(\.offset) == [3, 4, 5] && lost.next == 5)
        let otherEpoch = try await store.events(in: channel, after: 4, epoch: Epoch("stale"), limit: 10)
        #expect(!otherEpoch.recovered)
        let fromNow = try await store.events(in: channel, after: nil, epoch: nil, limit: 10)
        #expect(fromNow.recovered && fromNow.events.isEmpty && fromNow.next == 5)
        let page = try await store.events(in: channel, after: 2, epoch: events[0].epoch, limit: 2)
        #expect(page.events.map(\.offset) == [3, 4])
    }

    static func concurrentAppendsGetEveryOffsetOnce(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init(maxEventsPerChannel: 1000))
        let channel = try #require(ChannelName("busy"))
        let offsets = try await withThrowingTaskGroup(of: [Offset].self) { group in
            for writer in 0..<8 {
                group.addTask {
                    var offsets: [Offset] = []
                    for index in 0..<25 {
                        let event = try await store.append(
                            type: "t",
                            data: "\(writer * 100 + index)",
                            to: channel,
                            at: .now()
                        )
                        offsets.append(event.offset)
                    }
                    // Each writer sees its own events in the order it wrote them.
                    #expect(offsets == offsets.sorted())
                    return offsets
                }
            }
            return try await group.reduce(into: [Offset]()) { $0 += $1 }
        }
        #expect(offsets.sorted() == Array(1...200))
        let read = try await store.events(in: channel, after: 0, epoch: nil, limit: 500)
        #expect(read.events.map(\.offset) == Array(1...200) && Set(read.events.map(\.data)).count == 200)
    }

    static func eachChannelHasItsOwnEpoch(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        let first = try await store.append(type: "t", data: "1", to: try #require(ChannelName("a")), at: .now())
        let second = try await store.append(type: "t", data: "1", to: try #require(ChannelName("b")), at: .now())
        #expect(first.offset == 1 && second.offset == 1)
        #expect(!first.epoch.rawValue.isEmpty && first.epoch != second.epoch)
        let unknown = try await store.events(in: try #require(ChannelName("never")), after: 0, epoch: nil, limit: 10)
        #expect(unknown.events.isEmpty && unknown.epoch.rawValue.isEmpty && unknown.next == 0)
    }

    static func aLostCheckPositionGetsTheSnapshot(_ makeStore: MakeStore<any ChannelLog & CheckStore>) async throws {
        let store = try await makeStore(.init())
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        _ = try await store.finishCheck(check.id, as: .done, result: .int(1), error: nil, at: .now(), requiring: .any)
        let read = try await store.events(in: check.id.channel, after: 0, epoch: Epoch("gone"), limit: 10)
        #expect(!read.recovered && read.events.map(\.offset) == [2] && read.events[0].type == "check.done")
    }

    // MARK: Webhooks

    static func subscribe(_ store: any Store, _ id: String, _ url: String, at now: Timestamp) async throws {
        try await store.createSubscription(
            Subscription(id: id, targetURL: url, event: "*", secret: WebhookSecret.generate(), createdAt: now)
        )
    }

    /// `claimDeliveries`, every subscribed target healthy unless `healthy` says otherwise.
    static func claim(
        _ store: any Store,
        at now: Timestamp,
        lease: Duration = .seconds(5),
        limit: Int = 10,
        window: Int = 100,
        healthy: [String]? = nil
    ) async throws -> [Delivery] {
        let subscribed = try await store.subscriptions(limit: 1000, cursor: nil).items.map {
            Delivery.target(of: $0.targetURL)
        }
        return try await store.claimDeliveries(
            now: now,
            lease: lease,
            limit: limit,
            perTarget: 10,
            window: window,
            healthy: healthy ?? subscribed + ["https://cb.test:443"]
        )
    }

    /// The webhook policy with a disable period no test reaches.
    package static let neverDisabling: any AttemptPolicy = WebhookPolicy(disableAfter: .seconds(3_153_600_000))

    static func deliver(_ store: any Store, _ delivery: Delivery, at now: Timestamp) async throws {
        try await record(store, delivery, lease: delivery.lease, .delivered, at: now)
    }

    static func record(
        _ store: any Store,
        _ delivery: Delivery,
        lease: Int64,
        _ outcome: DeliveryOutcome,
        at time: Timestamp
    ) async throws {
        let attempt = DeliveryAttempt(at: time, statusCode: 500, durationMilliseconds: 1, error: nil, snippet: nil)
        try await store.recordAttempts(
            [AttemptRecord(deliveryID: delivery.id, attempt: attempt, outcome: outcome, lease: lease)],
            unparking: [],
            policy: neverDisabling,
            at: time
        )
    }

    static func aClaimLeasesADelivery(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        try await subscribe(store, "sub_a", "https://a.test/", at: now)
        let event = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: now)
        let claimed = try await claim(store, at: now)
        #expect(claimed.count == 1)
        let delivery = try #require(claimed.first)
        #expect(delivery.subscriptionID == "sub_a" && delivery.eventType == "t" && delivery.attempts == 0)
        #expect(delivery.payload == Delivery.payload(of: event) && delivery.id.hasPrefix("msg_"))
        #expect(delivery.target == "https://a.test:443")
        // Leased: no other claim takes it until the lease ends, then one does, with the same id.
        #expect(try await claim(store, at: now.adding(milliseconds: 4_000)).isEmpty)
        let again = try await claim(store, at: now.adding(milliseconds: 5_000))
        #expect(again.map(\.id) == [delivery.id] && again[0].lease > delivery.lease)
        try await record(store, again[0], lease: again[0].lease, .delivered, at: now.adding(milliseconds: 5_000))
        #expect(try await claim(store, at: now.adding(milliseconds: 60_000)).isEmpty)
        let stored = try #require(try await store.delivery(delivery.id))
        #expect(stored.0.state == .delivered && stored.0.attempts == 1 && stored.1.count == 1)
    }

    static func onlyTheCurrentLeaseDecides(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        try await subscribe(store, "sub_a", "https://a.test/", at: now)
        _ = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: now)
        let first = try #require(try await claim(store, at: now).first)
        // Its lease runs out (the attempt hangs); the delivery is claimed again.
        let later = now.adding(milliseconds: 6_000)
        let second = try #require(try await claim(store, at: later).first)
        #expect(second.id == first.id && second.lease == first.lease + 1)
        // The stale attempt's failure is logged but decides nothing: the delivery stays leased.
        try await record(store, first, lease: first.lease, .failed, at: later)
        var stored = try #require(try await store.delivery(first.id))
        #expect(stored.0.state == .pending && stored.0.attempts == 0 && stored.1.count == 1)
        #expect(try await claim(store, at: later.adding(milliseconds: 1_000)).isEmpty)  // not twice in flight
        // The current attempt succeeds; a late failure under either lease changes nothing.
        try await record(store, first, lease: second.lease, .delivered, at: later)
        try await record(store, first, lease: second.lease, .failed, at: later)
        try await record(store, first, lease: first.lease, .retry(at: later), at: later)
        stored = try #require(try await store.delivery(first.id))
        #expect(stored.0.state == .delivered && stored.0.attempts == 1 && stored.1.count == 4)
    }

    static func aRetryByHandWaitsForTheAttemptInFlight(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        try await subscribe(store, "sub_a", "https://a.test/", at: now)
        _ = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: now)
        let leased = try #require(try await claim(store, at: now, lease: .seconds(20)).first)
        _ = try await store.retryDelivery(leased.id, at: now.adding(milliseconds: 1_000))
        #expect(try await claim(store, at: now.adding(milliseconds: 2_000)).isEmpty)
        #expect(try await claim(store, at: now.adding(milliseconds: 20_000)).map(\.id) == [leased.id])
    }

    static func aRotationSignsWithBothSecrets(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        let (old, new) = (WebhookSecret.generate(), WebhookSecret.generate())
        try await store.createSubscription(
            Subscription(id: "sub_r", targetURL: "https://r.test/", event: "*", secret: old, createdAt: now)
        )
        _ = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: now)
        let rotated = try #require(try await store.rotateSecret("sub_r", to: new, overlap: .seconds(60), at: now))
        #expect(rotated.signingSecrets(at: now) == [new, old])
        #expect(rotated.signingSecrets(at: now.adding(milliseconds: 60_000)) == [new])
        // The delivery was queued before the rotation: it is signed as the subscription is now.
        let during = try await claim(store, at: now, lease: .zero)
        #expect(during.map(\.secrets) == [[new, old]])
        let after = try await claim(store, at: now.adding(milliseconds: 60_000), lease: .zero)
        #expect(after.map(\.secrets) == [[new]])
        // Rotating to the secret in use changes nothing.
        let again = try await store.rotateSecret("sub_r", to: new, overlap: .zero, at: now)
        #expect(again?.previousSecret == old && again?.signingSecrets(at: now) == [new, old])
    }

    static func aCallbackIsQueuedWithItsEvent(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        var spec = CheckSpec(parameters: .delay(milliseconds: 10, outcome: .done, result: nil))
        spec.callbackURL = "https://cb.test/hook"
        spec.callbackSecret = WebhookSecret.generate()
        let check = Check(id: .random(), spec: spec, createdAt: .now())
        _ = try await store.createCheck(check, idempotency: nil)
        #expect(try await claim(store, at: .now()).isEmpty)  // only the terminal event is called back
        let finish = try await store.finishCheck(
            check.id,
            as: .done,
            result: nil,
            error: nil,
            at: .now(),
            requiring: .any
        )
        guard case .finished(_, let event) = finish else {
            Issue.record("the check did not finish")
            return
        }
        let claimed = try await claim(store, at: .now())
        #expect(claimed.count == 1)
        #expect(claimed.first?.checkID == check.id.rawValue && claimed.first?.subscriptionID == nil)
        #expect(claimed.first?.eventType == "check.done" && claimed.first?.payload == Delivery.payload(of: event))
        #expect(claimed.first?.secrets == [spec.callbackSecret!])
    }

    static func aSubscriptionGetsWhatItMatches(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        for (id, pattern) in [("sub_all", "*"), ("sub_checks", "check.*"), ("sub_order", "order.paid")] {
            try await store.createSubscription(
                Subscription(id: id, targetURL: "https://\(id).test/", event: pattern, secret: "s", createdAt: now)
            )
        }
        let channel = try #require(ChannelName("c"))
        for type in ["order.paid", "order.paidx", "check.done", "checkdone"] {
            _ = try await store.append(type: type, data: "1", to: channel, at: now)
        }
        let claimed = try await claim(store, at: now, limit: 100)
        func types(_ id: String) -> [String] { claimed.filter { $0.subscriptionID == id }.map(\.eventType).sorted() }
        #expect(types("sub_all") == ["check.done", "checkdone", "order.paid", "order.paidx"])
        #expect(types("sub_checks") == ["check.done"])
        #expect(types("sub_order") == ["order.paid"])
    }

    static func aClaimTakesPreferredTargetsFirst(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        try await subscribe(store, "sub_a", "https://a.test/", at: now)
        try await subscribe(store, "sub_b", "https://b.test/", at: now)
        let channel = try #require(ChannelName("c"))
        for n in 0..<3 { _ = try await store.append(type: "t", data: "\(n)", to: channel, at: now) }
        func claim(limit: Int, perTarget: Int, healthy: [String]) async throws -> [String?] {
            try await store.claimDeliveries(
                now: now,
                lease: .seconds(20),
                limit: limit,
                perTarget: perTarget,
                window: 100,
                healthy: healthy
            ).map(\.subscriptionID)
        }
        // sub_a's deliveries are as old, but b.test is preferred (a healthy target).
        #expect(try await claim(limit: 1, perTarget: 10, healthy: ["https://b.test:443"]) == ["sub_b"])
        // The cap per target applies before the limit: a claim of two reaches both targets.
        #expect(Set(try await claim(limit: 2, perTarget: 1, healthy: [])) == ["sub_a", "sub_b"])
        // a.test is not known healthy, so it is sent one at a time: one row for its three events.
        let rows = { (id: String) in try await store.deliveries(matching: .init(subscriptionID: id)).items.count }
        #expect(try await rows("sub_a") == 1)
        #expect(try await rows("sub_b") == 3)
    }

    static func aParkedTargetWaits(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        try await subscribe(store, "sub_a", "https://a.test/", at: now)
        let channel = try #require(ChannelName("c"))
        _ = try await store.append(type: "t", data: "1", to: channel, at: now)
        let first = try await claim(store, at: now, lease: .seconds(1))
        #expect(first.count == 1)
        // Its target is parked for a minute: the claimed one is held, and the backlog waits.
        let until = now.adding(milliseconds: 60_000)
        try await store.holdDeliveries(
            [(first[0].id, until)],
            parking: [("https://a.test:443", until)],
            at: now
        )
        _ = try await store.append(type: "t", data: "2", to: channel, at: now)
        #expect(try await claim(store, at: now.adding(milliseconds: 2_000)).isEmpty)
        #expect(try await store.nextDeliveryDue(now: now.adding(milliseconds: 2_000), window: 100) == until)
        // Unparked (its attempt in flight ended), everything parked is due at once.
        let later = now.adding(milliseconds: 3_000)
        try await store.recordAttempts([], unparking: ["https://a.test:443"], policy: neverDisabling, at: later)
        let due = try await claim(store, at: later)
        #expect(due.count == 2 && Set(due.map(\.id)).contains(first[0].id))
    }

    static func aSubscriptionFailingTooLongIsDisabled(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let start = Timestamp.now()
        try await subscribe(store, "sub_d", "https://d.test/", at: start)
        let channel = try #require(ChannelName("c"))
        _ = try await store.append(type: "t", data: "1", to: channel, at: start)
        _ = try await store.append(type: "t", data: "2", to: channel, at: start)
        let claimed = try await claim(store, at: start)
        #expect(claimed.count == 2)
        func fail(_ delivery: Delivery, at time: Timestamp) async throws {
            let attempt = DeliveryAttempt(at: time, statusCode: 500, durationMilliseconds: 1, error: nil, snippet: nil)
            try await store.recordAttempt(
                attempt,
                of: delivery.id,
                outcome: .retry(at: time.adding(milliseconds: 1000)),
                policy: WebhookPolicy(disableAfter: .seconds(5))
            )
        }
        try await fail(claimed[0], at: start)
        #expect(try await store.subscription("sub_d")?.failingSince == start)
        try await fail(claimed[0], at: start.adding(milliseconds: 6000))
        #expect(try await store.subscription("sub_d")?.disabledAt != nil)
        #expect(try await store.delivery(claimed[1].id)?.0.state == .failed)
        // No new delivery while disabled; a PUT re-enables, from the log's head.
        _ = try await store.append(type: "t", data: "3", to: channel, at: start)
        #expect(try await store.deliveries(matching: .init(subscriptionID: "sub_d")).items.count == 2)
        let enabled = try await store.updateSubscription(
            "sub_d",
            targetURL: "https://d2.test/",
            event: "*",
            secret: nil,
            overlap: .zero,
            at: start
        )
        #expect(enabled?.disabledAt == nil && enabled?.failingSince == nil)
        _ = try await store.append(type: "t", data: "4", to: channel, at: start)
        let next = try await claim(store, at: start)
        #expect(next.count == 1 && next[0].payload.contains("\"data\":4") && next[0].target == "https://d2.test:443")
    }

    static func aLaggingSubscriptionIsDisabled(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        let channel = try #require(ChannelName("c"))
        try await subscribe(store, "sub_slow", "https://slow.test/", at: now)
        try await subscribe(store, "sub_ok", "https://ok.test/", at: now)
        for n in 0..<6 { _ = try await store.append(type: "t", data: "\(n)", to: channel, at: now) }
        // Two deliveries each; sub_ok's succeed and it reads on, sub_slow's stay pending.
        for delivery in try await claim(store, at: now, limit: 100, window: 2) where delivery.subscriptionID == "sub_ok"
        {
            try await deliver(store, delivery, at: now)
        }
        _ = try await claim(store, at: now, limit: 100, window: 10)
        // sub_slow: 4 entries past its cursor and 2 pending deliveries wait; sub_ok: 4 pending.
        let cap = LagCap(events: 5, age: .seconds(60))
        let disabled = try await store.disableLagging(beyond: cap, at: now)
        #expect(disabled == [LaggingSubscription(id: "sub_slow", reason: .lagEvents, events: 6, oldest: now)])
        #expect(try await store.subscription("sub_slow")?.disabledReason == .lagEvents)
        #expect(try await store.deliveries(matching: .init(subscriptionID: "sub_slow", state: .pending)).items.isEmpty)
        let aged = try await store.disableLagging(beyond: cap, at: now.adding(milliseconds: 61_000))
        #expect(aged.map(\.id) == ["sub_ok"] && aged.map(\.reason) == [.lagAge])
    }

    static func aGoneTargetDeletesItsSubscription(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        try await subscribe(store, "sub_g", "https://g.test/", at: now)
        let channel = try #require(ChannelName("c"))
        _ = try await store.append(type: "t", data: "1", to: channel, at: now)
        _ = try await store.append(type: "t", data: "2", to: channel, at: now)
        let claimed = try await claim(store, at: now)
        try await record(store, claimed[0], lease: claimed[0].lease, .gone, at: now)
        #expect(try await store.subscription("sub_g") == nil)
        #expect(try await store.delivery(claimed[1].id)?.0.state == .failed)
        #expect(try await store.deleteSubscription("sub_g", at: now) == false)
    }

    static func aReplayQueuesWhatItMatched(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init())
        let now = Timestamp.now()
        let channel = try #require(ChannelName("c"))
        _ = try await store.append(type: "order.paid", data: "1", to: channel, at: now.adding(milliseconds: -5_000))
        _ = try await store.append(type: "order.paid", data: "2", to: channel, at: now)
        _ = try await store.append(type: "other", data: "3", to: channel, at: now)
        try await store.createSubscription(
            Subscription(id: "sub_r", targetURL: "https://r.test/", event: "order.*", secret: "s", createdAt: now)
        )
        #expect(try await store.replay(subscription: "sub_r", since: now.adding(milliseconds: -1_000), at: now) == 1)
        #expect(try await store.replay(subscription: "sub_none", since: now, at: now) == nil)
        let claimed = try await claim(store, at: now)
        #expect(claimed.map(\.eventType) == ["order.paid"] && claimed[0].payload.contains("\"data\":2"))
    }

    static func pruningRemovesOldEventsAndEndedChecks(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init(maxEventAge: .seconds(60), checkRetention: .seconds(60)))
        let channel = try #require(ChannelName("old"))
        _ = try await store.append(type: "t", data: "1", to: channel, at: .now())
        let ended = delayCheck()
        _ = try await store.createCheck(ended, idempotency: nil)
        _ = try await store.finishCheck(ended.id, as: .done, result: nil, error: nil, at: .now(), requiring: .any)
        let running = delayCheck()
        _ = try await store.createCheck(running, idempotency: nil)
        let removed = try await store.prune(now: Timestamp.now().adding(milliseconds: 120_000))
        #expect(removed > 0)
        #expect(try await store.check(ended.id) == nil)
        #expect(try await store.check(running.id) != nil)
        let read = try await store.events(in: channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events.isEmpty && read.epoch.rawValue.isEmpty)
        let kept = try await store.events(in: running.id.channel, after: 0, epoch: nil, limit: 10)
        #expect(kept.events.map(\.offset) == [1])
    }

    static func endedDeliveriesArePruned(_ makeStore: MakeStore<any Store>) async throws {
        let store = try await makeStore(.init(checkRetention: .seconds(60)))
        let now = Timestamp.now()
        try await subscribe(store, "sub_a", "https://a.test/", at: now)
        try await subscribe(store, "sub_b", "https://b.test/", at: now)
        _ = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: now)
        let claimed = try await claim(store, at: now)
        #expect(claimed.count == 2)
        let delivered = try #require(claimed.first { $0.subscriptionID == "sub_a" })
        let pending = try #require(claimed.first { $0.subscriptionID == "sub_b" })
        try await deliver(store, delivered, at: now)
        _ = try await store.prune(now: now.adding(milliseconds: 120_000))
        #expect(try await store.delivery(delivered.id) == nil)
        #expect(try await store.delivery(pending.id)?.0.state == .pending)
    }
}
