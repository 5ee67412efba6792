import Foundation
import GRDB
import HeraldCore
import HeraldStore
import HeraldTesting
import Testing

@testable import HeraldSQLite

/// Opens a store in a fresh temporary directory.
func makeStore(_ retention: RetentionConfiguration = .init()) throws -> (SQLiteStore, URL) {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("herald-test-\(UUID().uuidString)")
    return (try SQLiteStore(directory: directory, retention: retention), directory)
}

private func delayCheck(_ ms: Int64 = 100) -> Check {
    Check(
        id: .random(),
        spec: CheckSpec(parameters: .delay(milliseconds: ms, outcome: .done, result: nil)),
        createdAt: .now()
    )
}

@Suite(.timeLimit(.minutes(1))) struct SQLiteStoreTests {
    @Test(arguments: StoreConformance.logAndChecks)
    func conformance(_ requirement: StoreConformance.Case<any ChannelLog & CheckStore>) async throws {
        try await requirement.run { retention in try makeStore(retention).0 }
    }

    @Test(arguments: StoreConformance.webhooks)
    func webhookConformance(_ requirement: StoreConformance.Case<any Store>) async throws {
        try await requirement.run { retention in try makeStore(retention).0 }
    }

    @Test(arguments: [(Durability.normal, 1), (.full, 2)])
    func theWriterCommitsWithTheChosenDurability(durability: Durability, synchronous: Int) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "herald-test-\(UUID().uuidString)"
        )
        let store = try SQLiteStore(directory: directory, retention: .init(), durability: durability)
        let setting = try await store.pool.write { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") }
        #expect(setting == synchronous)
    }

    /// `claimDeliveries` with no preferred target.
    private func claim(
        _ store: SQLiteStore,
        at now: Timestamp,
        lease: Duration = .seconds(5),
        limit: Int = 10,
        perTarget: Int = 10,
        window: Int = 100,
        healthy: [String]? = nil
    ) async throws -> [Delivery] {
        // Every subscribed target is healthy unless told otherwise.
        let subscribed = try await store.pool.read {
            try String.fetchAll($0, sql: "SELECT DISTINCT target FROM subscriptions")
        }
        return try await store.claimDeliveries(
            now: now,
            lease: lease,
            limit: limit,
            perTarget: perTarget,
            window: window,
            healthy: healthy ?? subscribed
        )
    }

    /// Records a successful attempt of delivery `id`.
    private func deliver(_ store: SQLiteStore, _ id: String, at now: Timestamp) async throws {
        let attempt = DeliveryAttempt(at: now, statusCode: 200, durationMilliseconds: 1, error: nil, snippet: nil)
        try await store.recordAttempt(
            attempt,
            of: id,
            outcome: .delivered,
            policy: StoreConformance.neverDisabling
        )
    }

    /// Unparks `target` as the dispatcher does when its attempt in flight ends.
    private func unpark(_ store: SQLiteStore, _ target: String, at now: Timestamp) async throws {
        try await store.recordAttempts([], unparking: [target], policy: StoreConformance.neverDisabling, at: now)
    }

    /// Creates a subscription to each `(id, target URL)` for `event`.
    private func subscribe(
        _ store: SQLiteStore,
        _ targets: [(id: String, url: String)],
        event: String = "*",
        at now: Timestamp
    ) async throws {
        for (id, url) in targets {
            try await store.createSubscription(
                Subscription(id: id, targetURL: url, event: event, secret: WebhookSecret.generate(), createdAt: now)
            )
        }
    }

    @Test func aClaimTakesAFewOfATargetAndAParkedTargetIsPassedOver() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        try await subscribe(
            store,
            [("sub_busy", "https://busy.test/a"), ("sub_other", "https://other.test/")],
            at: now
        )
        let channel = try #require(ChannelName("c"))
        for n in 0..<5 { _ = try await store.append(type: "t", data: "\(n)", to: channel, at: now) }
        let first = try await claim(store, at: now, lease: .seconds(20), limit: 100, perTarget: 2)
        #expect(first.filter { $0.subscriptionID == "sub_busy" }.count == 2)
        #expect(first.filter { $0.subscriptionID == "sub_other" }.count == 2)
        #expect(first.first?.target == "https://busy.test:443")
        // Parking a target moves its backlog at once; what is leased (in flight) keeps its time.
        let later = now.adding(milliseconds: 60_000)
        try await store.holdDeliveries([], parking: [("https://busy.test:443", later)], at: now)
        let second = try await claim(store, at: now, lease: .seconds(20), limit: 100, perTarget: 2)
        #expect(second.map(\.subscriptionID) == ["sub_other", "sub_other"])
        // A parked target gets no new deliveries: its new events wait in the log.
        _ = try await store.append(type: "t", data: "5", to: channel, at: now)
        let third = try await claim(store, at: now, lease: .seconds(20), limit: 100, perTarget: 5)
        #expect(third.map(\.subscriptionID) == ["sub_other", "sub_other"])
        // Unparked, the backlog is due at once: the 3 parked and the new one, not the 2 leased.
        #expect(try await store.deliveries(matching: .init(subscriptionID: "sub_busy")).items.count == 5)
        try await unpark(store, "https://busy.test:443", at: now)
        let fourth = try await claim(store, at: now, lease: .seconds(20), limit: 100)
        #expect(fourth.filter { $0.subscriptionID == "sub_busy" }.count == 4)
        // A park that ran out is forgotten by the janitor, so the table does not grow per target.
        try await store.holdDeliveries([], parking: [("https://busy.test:443", later)], at: now)
        let parkedTargets = {
            try await store.pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM parked_targets") }
        }
        #expect(try await parkedTargets() == 1)
        _ = try await store.prune(now: later.adding(milliseconds: 1))
        #expect(try await parkedTargets() == 0)
        // At start-up every park is lifted: no attempt is in flight, no circuit is known.
        _ = try await store.append(type: "t", data: "6", to: channel, at: now)
        try await store.holdDeliveries([], parking: [("https://busy.test:443", later)], at: now)
        #expect(try await claim(store, at: now).allSatisfy { $0.subscriptionID == "sub_other" })
        try await store.unparkAll(at: now)
        #expect(try await parkedTargets() == 0)
        #expect(try await claim(store, at: now).map(\.subscriptionID) == ["sub_busy"])
    }

    @Test func aClaimOverALargeBacklogStillTakesAFewOfEachTargetPreferredFirst() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        // More due than one claim numbers: it walks the targets instead. a.test's backlog is
        // older than b.test's; c.test's is parked (due later).
        let backlog: [(String, Int, Int64)] = [
            ("a", SQLiteStore.claimScan + 50, 0), ("b", 3, 1_000), ("c", 20, 60_000),
        ]
        try await store.pool.write { db in
            var seq = 0
            for (host, count, delay) in backlog {
                for _ in 0..<count {
                    seq += 1
                    try db.execute(
                        sql: """
                            INSERT INTO deliveries (id, check_id, target_url, target, secret, event_type, event_time,
                                                    payload, state, attempts, next_attempt_at, created_at, updated_at)
                            VALUES (?, 'chk', ?, ?, 's', 't', ?, '{}', 'pending', 0, ?, ?, ?)
                            """,
                        arguments: [
                            "msg_\(seq)", "https://\(host).test/", "https://\(host).test:443",
                            now.millisecondsSince1970, now.millisecondsSince1970 - 2_000 + delay,
                            now.millisecondsSince1970, now.millisecondsSince1970,
                        ]
                    )
                }
            }
        }
        let claimed = try await claim(store, at: now, limit: 5, perTarget: 2, healthy: ["https://b.test:443"])
        #expect(
            claimed.map(\.target) == [
                "https://b.test:443", "https://b.test:443", "https://a.test:443", "https://a.test:443",
            ]
        )
        #expect(
            claimed.map(\.id) == [
                "msg_\(SQLiteStore.claimScan + 51)", "msg_\(SQLiteStore.claimScan + 52)", "msg_1", "msg_2",
            ]
        )
    }

    @Test func subscriptionsReadTheEventLogThroughAWindowAndParkedOnesCostNoRows() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        try await subscribe(store, [("sub_w", "https://w.test/")], event: "t.*", at: now)
        try await subscribe(store, [("sub_p", "https://p.test/")], at: now)
        try await store.holdDeliveries([], parking: [("https://p.test:443", now.adding(milliseconds: 60_000))], at: now)
        let channel = try #require(ChannelName("c"))
        for n in 0..<6 {
            _ = try await store.append(type: "t.x", data: "\(n)", to: channel, at: now)
            _ = try await store.append(type: "u", data: "\(n)", to: channel, at: now)
        }
        let claimWindow = { try await self.claim(store, at: now, lease: .seconds(20), limit: 100, window: 4) }
        let first = try await claimWindow()
        #expect(first.map(\.subscriptionID) == Array(repeating: "sub_w", count: 4))
        #expect(first.allSatisfy { $0.eventType == "t.x" })
        // Twelve events, and no row for the parked target's subscription.
        #expect(try await store.deliveries(matching: .init(subscriptionID: "sub_p")).items.isEmpty)
        // Four not yet attempted fill the window; two attempts make room for the last two.
        #expect(try await claimWindow().isEmpty)
        // Meanwhile the fan-out skips both: the full one for a while, the parked one until its park ends.
        let fanOutAt = { (id: String) in
            try await store.pool.read {
                try Int64.fetchOne($0, sql: "SELECT fan_out_at FROM subscriptions WHERE id = ?", arguments: [id])
            }
        }
        #expect(try await fanOutAt("sub_w") ?? 0 > now.millisecondsSince1970)
        #expect(try await fanOutAt("sub_p") == now.adding(milliseconds: 60_000).millisecondsSince1970)
        for delivery in first.prefix(2) {
            try await deliver(store, delivery.id, at: now)
        }
        #expect(try await fanOutAt("sub_w") == 0)
        let second = try await claimWindow()
        #expect(second.map(\.payload).map { $0.contains("\"data\":4") || $0.contains("\"data\":5") } == [true, true])
        #expect(try await store.nextDeliveryDue(now: now, window: 4) != now)
        // Unparked, the subscription reads its backlog from the log, a window at a time.
        try await unpark(store, "https://p.test:443", at: now)
        #expect(try await fanOutAt("sub_p") == 0)
        #expect(try await store.nextDeliveryDue(now: now, window: 4) == now)
        #expect(try await claimWindow().map(\.subscriptionID) == Array(repeating: "sub_p", count: 4))
        // The log keeps what an active subscription has not read, and only that.
        _ = try await store.prune(now: now)
        let kept = try await store.pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM webhook_events") }
        #expect(kept == 8)
        #expect(try await store.deleteSubscription("sub_p", at: now))
        _ = try await store.prune(now: now)
        let left = try await store.pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM webhook_events") }
        #expect(left == 1)
    }

    @Test func janitorBatchesFollowTheTimeTheLastOneTook() {
        let target = SQLiteStore.pruneBatchTime
        let rows = SQLiteStore.pruneBatchRows
        #expect(SQLiteStore.nextBatchRows(after: 64, took: target / 10) == 128)
        #expect(SQLiteStore.nextBatchRows(after: 64, took: target * 3 / 4) == 64)
        #expect(SQLiteStore.nextBatchRows(after: 64, took: target * 5) == 32)
        #expect(SQLiteStore.nextBatchRows(after: rows.least, took: target * 5) == rows.least)
        #expect(SQLiteStore.nextBatchRows(after: rows.most, took: .zero) == rows.most)
    }

    @Test func theEventLogHoldsOnlyWhatAnActiveSubscriptionMatches() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        let channel = try #require(ChannelName("c"))
        let logged = {
            try await store.pool.read { try String.fetchAll($0, sql: "SELECT type FROM webhook_events ORDER BY seq") }
        }
        try await subscribe(store, [("sub_t", "https://t.test/")], event: "t.*", at: now)
        _ = try await store.append(type: "u", data: "1", to: channel, at: now)
        _ = try await store.append(type: "t.x", data: "2", to: channel, at: now)
        #expect(try await logged() == ["t.x"])
        // A disabled subscription reads nothing, so nothing is logged for it.
        _ = try await store.disableLagging(beyond: LagCap(events: 0, age: .seconds(60)), at: now)
        _ = try await store.append(type: "t.y", data: "3", to: channel, at: now)
        #expect(try await logged() == ["t.x"])
    }

    /// The dispatcher reads the queue after an event only when this count moved.
    @Test func onlyWritesThatQueueWebhookWorkAreCounted() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        let channel = try #require(ChannelName("c"))
        #expect(store.localQueueings == 0)
        _ = try await store.append(type: "t.x", data: "1", to: channel, at: now)
        #expect(store.localQueueings == 0)  // no subscription
        try await subscribe(store, [("sub_t", "https://t.test/")], event: "t.*", at: now)
        _ = try await store.append(type: "u", data: "2", to: channel, at: now)
        #expect(store.localQueueings == 0)  // one no subscription matches
        _ = try await store.append(type: "t.y", data: "3", to: channel, at: now)
        #expect(store.localQueueings == 1)
        // A check's callback is queued work too, whatever subscriptions match.
        let spec = CheckSpec(
            parameters: .delay(milliseconds: 1000, outcome: .done, result: nil),
            callbackURL: "https://cb.test/hook",
            callbackSecret: "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0",
            callbackEvents: .all
        )
        _ = try await store.createCheck(Check(id: .random(), spec: spec, createdAt: now), idempotency: nil)
        #expect(store.localQueueings == 2)
    }

    @Test func aSubscriptionPastItsLagCapIsDisabledWithTheReason() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        let channel = try #require(ChannelName("c"))
        try await subscribe(store, [("sub_slow", "https://slow.test/"), ("sub_ok", "https://ok.test/")], at: now)
        for n in 0..<6 {
            _ = try await store.append(type: "t", data: "\(n)", to: channel, at: now)
        }
        // Two deliveries each; sub_ok's succeed and it reads on, sub_slow's stay pending.
        let claimed = try await claim(store, at: now, limit: 100, window: 2)
        for delivery in claimed where delivery.subscriptionID == "sub_ok" {
            try await deliver(store, delivery.id, at: now)
        }
        _ = try await claim(store, at: now, limit: 100, window: 10)
        // sub_slow: 4 entries past its cursor and 2 pending deliveries wait; sub_ok: 4 pending.
        let cap = LagCap(events: 5, age: .seconds(60))
        let disabled = try await store.disableLagging(beyond: cap, at: now)
        #expect(disabled == [LaggingSubscription(id: "sub_slow", reason: .lagEvents, events: 6, oldest: now)])
        let slow = try #require(try await store.subscription("sub_slow"))
        #expect(slow.disabledReason == .lagEvents && slow.json().contains("\"disabled_reason\":\"lag_events\""))
        #expect(try await store.deliveries(matching: .init(subscriptionID: "sub_slow", state: .pending)).items.isEmpty)
        // With sub_slow gone, the log keeps nothing that sub_ok has read.
        _ = try await store.prune(now: now)
        let kept = try await store.pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM webhook_events") }
        #expect(kept == 0)
        // Later, sub_ok's oldest waiting event is past the age cap.
        let later = now.adding(milliseconds: 61_000)
        let aged = try await store.disableLagging(beyond: cap, at: later)
        #expect(aged.map(\.id) == ["sub_ok"] && aged.map(\.reason) == [.lagAge])
        // A PUT re-enables and clears the reason.
        let enabled = try await store.updateSubscription(
            "sub_slow",
            targetURL: "https://slow.test/",
            event: "*",
            secret: nil,
            overlap: .zero,
            at: later
        )
        #expect(enabled?.disabledAt == nil && enabled?.disabledReason == nil)
    }

    @Test func aSubscriptionCreatedAfterTheLogWasEmptiedIsBehindOnlyWhatCameSince() async throws {
        let (store, _) = try makeStore()
        let now = Timestamp.now()
        let channel = try #require(ChannelName("c"))
        try await subscribe(store, [("sub_old", "https://old.test/")], at: now)
        for n in 0..<5 { _ = try await store.append(type: "t", data: "\(n)", to: channel, at: now) }
        for delivery in try await claim(store, at: now, limit: 100) { try await deliver(store, delivery.id, at: now) }
        _ = try await claim(store, at: now, limit: 100)  // reads to the head
        _ = try await store.prune(now: now)
        let logged = try await store.pool.read { try Int.fetchOne($0, sql: "SELECT COUNT(*) FROM webhook_events") }
        #expect(logged == 0)
        // The log is empty but its numbering goes on: a new subscription starts at its end.
        try await subscribe(store, [("sub_new", "https://new.test/")], at: now)
        _ = try await store.append(type: "t", data: "5", to: channel, at: now)
        let lagging = try await store.disableLagging(beyond: LagCap(events: 2, age: .seconds(60)), at: now)
        #expect(lagging.isEmpty)
        // Even with a cursor from before (as stored by earlier versions), only what is kept counts.
        try await store.pool.write { try $0.execute(sql: "UPDATE subscriptions SET cursor = 0 WHERE id = 'sub_new'") }
        #expect(try await store.disableLagging(beyond: LagCap(events: 2, age: .seconds(60)), at: now).isEmpty)
    }

    @Test func pruningGoesInBatchesUntilNothingIsPastRetention() async throws {
        let (store, _) = try makeStore(.init(maxEventsPerChannel: 10_000, maxEventAge: .seconds(60)))
        let channel = try #require(ChannelName("busy"))
        let old = Timestamp.now().adding(milliseconds: -120_000)
        let count = SQLiteStore.pruneBatchRows.most * 2 + 7
        try await store.pool.write { db in
            try db.execute(
                sql: "INSERT INTO channels (name, epoch, last_offset, updated_at) VALUES ('busy', 'e', ?, ?)",
                arguments: [count, old.millisecondsSince1970]
            )
            for offset in 1...count {
                try db.execute(
                    sql: "INSERT INTO events (channel, offset, type, time, data) VALUES ('busy', ?, 't', ?, '1')",
                    arguments: [offset, old.millisecondsSince1970]
                )
            }
        }
        let recent = try await store.append(type: "t", data: "2", to: try #require(ChannelName("recent")), at: .now())
        #expect(try await store.prune(now: .now()) == count + 1)  // the events, then their channel
        let read = try await store.events(in: channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events.isEmpty && read.epoch.rawValue.isEmpty)
        #expect(try await store.events(in: recent.channel, after: 0, epoch: nil, limit: 10).events == [recent])
    }

    @Test func aStoreWrittenByV2IsUpgradedWithItsQueuedDeliveries() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "herald-test-\(UUID().uuidString)"
        )
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let now = Timestamp.now().millisecondsSince1970
        do {
            let old = try DatabaseQueue(path: directory.appendingPathComponent("herald.sqlite").path)
            try SQLiteStore.migrator.migrate(old, upTo: "v2: webhook subscriptions, delivery outbox and log")
            try await old.write { db in
                try db.execute(
                    sql: """
                        INSERT INTO subscriptions (id, target_url, event, secret, created_at, updated_at)
                        VALUES ('sub_up', 'https://Up.test/hook', '*', ?, ?, ?);
                        INSERT INTO deliveries (id, subscription_id, target_url, secret, event_type, event_time, payload,
                                                state, next_attempt_at, created_at, updated_at)
                        VALUES ('msg_old', 'sub_up', 'https://Up.test/hook', '', 't', ?, '{}', 'pending', ?, ?, ?);
                        """,
                    arguments: [WebhookSecret.generate(), now, now, now, now, now, now]
                )
            }
        }
        let store = try SQLiteStore(directory: directory, retention: .init())
        // The queued delivery kept, its target filled in; a new event reaches the subscription.
        _ = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: .now())
        let claimed = try await claim(store, at: .now())
        #expect(claimed.map(\.id).first == "msg_old" && claimed.count == 2)
        #expect(claimed.allSatisfy { $0.target == "https://up.test:443" && $0.subscriptionID == "sub_up" })
    }

    @Test func dataSurvivesReopening() async throws {
        let (store, directory) = try makeStore()
        let check = delayCheck()
        _ = try await store.createCheck(check, idempotency: nil)
        let reopened = try SQLiteStore(directory: directory, retention: .init())
        #expect(try await reopened.processingChecks(after: nil, limit: 10).checks.map(\.id) == [check.id])
    }

}
