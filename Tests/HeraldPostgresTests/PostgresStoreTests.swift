import Foundation
import HeraldCore
import HeraldHub
import HeraldStore
import HeraldTesting
import Logging
import PostgresNIO
import Synchronization
import Testing

@testable import HeraldCluster
@testable import HeraldPostgres

/// The PostgreSQL server the tests use: `HERALD_TEST_POSTGRES`, a `postgres://` URL, which
/// `scripts/test.sh` sets to a throwaway server it starts. Each store gets a schema of its own.
private func serverURL() throws -> String {
    guard let url = ProcessInfo.processInfo.environment["HERALD_TEST_POSTGRES"], !url.isEmpty else {
        throw TestSetupError(
            "HERALD_TEST_POSTGRES is not set: run scripts/test.sh, which starts a throwaway PostgreSQL "
                + "(apt-get install -y postgresql), or point it at a postgres://user@host:port/database you can write to"
        )
    }
    return url
}

private struct TestSetupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Stores opened by one test, stopped when it ends.
private final class Stores: Sendable {
    private let running = Mutex<[Task<Void, Never>]>([])

    /// A fresh store in a new schema, migrated and running.
    func make(_ retention: RetentionConfiguration) async throws -> PostgresStore {
        try await open(try await makeSchema(), retention)
    }

    /// A new, empty schema's URL.
    func makeSchema() async throws -> PostgresURL {
        var url = try PostgresURL(try serverURL())
        let schema = "herald_test_\(UUID().uuidString.prefix(8).lowercased())"
        let admin = PostgresStore(configuration: url.client(connections: 1), retention: .init(), logger: Self.logger)
        let adminTask = Task { await admin.run() }
        defer { adminTask.cancel() }
        try await admin.client.query("CREATE SCHEMA \(unescaped: schema)")
        url.searchPath = schema
        return url
    }

    /// A store on the schema of `url` (another node's, when it has one already), migrated and running.
    func open(
        _ url: PostgresURL,
        _ retention: RetentionConfiguration = .init(),
        node: String = "node"
    ) async throws -> PostgresStore {
        let store = PostgresStore(
            configuration: url.client(connections: 8),
            retention: retention,
            node: node,
            logger: Self.logger
        )
        running.withLock { $0.append(Task { await store.run() }) }
        try await store.migrate()
        return store
    }

    /// Runs `service` until the test ends.
    func run(_ service: PostgresBroker) {
        running.withLock { $0.append(Task { try? await service.run() }) }
    }

    static let logger = Logger(label: "herald.test.postgres")

    func stop() {
        for task in running.withLock({ $0 }) { task.cancel() }
    }
}

@Suite(.timeLimit(.minutes(1))) struct PostgresStoreTests {
    @Test(arguments: StoreConformance.logAndChecks)
    func conformance(_ requirement: StoreConformance.Case<any ChannelLog & CheckStore>) async throws {
        let stores = Stores()
        defer { stores.stop() }
        try await requirement.run { retention in try await stores.make(retention) }
    }

    @Test(arguments: StoreConformance.webhooks)
    func webhookConformance(_ requirement: StoreConformance.Case<any Store>) async throws {
        let stores = Stores()
        defer { stores.stop() }
        try await requirement.run { retention in try await stores.make(retention) }
    }

    /// Two nodes on one schema, each with its store, hub and broker, listening.
    private func twoNodes(_ stores: Stores, backstop: Duration = .seconds(60)) async throws -> [Node] {
        let url = try await stores.makeSchema()
        var nodes: [Node] = []
        for name in ["a", "b"] {
            let store = try await stores.open(url)
            let hub = Hub()
            let broker = PostgresBroker(
                store: store,
                hub: hub,
                node: name,
                url: url,
                backstop: backstop,
                logger: Stores.logger
            )
            stores.run(broker)
            while !broker.isListening { try await Task.sleep(for: .milliseconds(10)) }
            nodes.append(Node(store: store, hub: hub, events: EventLog(store: store, broker: broker)))
        }
        return nodes
    }

    private struct Node {
        var store: PostgresStore
        var hub: Hub
        var events: EventLog

        /// The offsets a stream on this node gets from `channel` until it has `last`, once it follows.
        func follow(_ channel: ChannelName, until last: Offset) async throws -> Task<[Offset], any Error> {
            struct Done: Error {}
            let follower = ChannelFollower(store: store, hub: hub, pageSize: 100, heartbeat: .seconds(30))
            let task = Task {
                var offsets: [Offset] = []
                do {
                    _ = try await follower.follow(channel, after: 0, epoch: nil) { item in
                        guard case .events(let events) = item else { return }
                        offsets += events.map(\.event.offset)
                        if offsets.last == last { throw Done() }
                    }
                } catch is Done {}
                return offsets
            }
            while !hub.isFollowed(channel) { try await Task.sleep(for: .milliseconds(5)) }
            return task
        }
    }

    @Test(.timeLimit(.minutes(1))) func anEventPublishedOnOneNodeReachesTheOtherNodesFollowers() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let nodes = try await twoNodes(stores)
        let channel = try #require(ChannelName("orders"))
        let onA = try await nodes[0].follow(channel, until: 3)
        let onB = try await nodes[1].follow(channel, until: 3)
        for n in 1...3 { _ = try await nodes[0].events.publish(type: "t", data: .int(Int64(n)), to: channel) }
        // Node a's stream gets each event from its hub; node b's hears of them, reads them, and
        // fills any hole from the store: every event once, in order, on both.
        #expect(try await onA.value == [1, 2, 3])
        #expect(try await onB.value == [1, 2, 3])
        // A long poll on b that is caught up wakes for the next event published on a. b's stream
        // may have read 3 from the store before b's broker announced it, so a late 3 may wake the
        // poll first: like a real one, it waits on for what comes after its position.
        let hub = nodes[1].hub
        let woke = Task {
            try await hub.wait(on: channel, until: .now.advanced(by: .seconds(20))) { event -> Offset? in
                guard let offset = event?.event.offset, offset > 3 else { return nil }
                return offset
            }
        }
        while !hub.isFollowed(channel) { try await Task.sleep(for: .milliseconds(5)) }
        _ = try await nodes[0].events.publish(type: "t", data: .int(4), to: channel)
        #expect(try await woke.value == 4)
    }

    @Test(.timeLimit(.minutes(1))) func aNodeAnnouncesEveryEventSinceTheHeadItKnewInOrder() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let nodes = try await twoNodes(stores)
        let channel = try #require(ChannelName("burst"))
        let hub = nodes[1].hub
        // What b's hub hands its subscribers, as they get it (no store read fills anything here).
        let heard = Mutex<[Offset]>([])
        let hearing = Task {
            try await hub.withSubscription(to: channel) { subscription in
                while heard.withLock({ $0.last }) != 21 {
                    guard case .events(let events) = await subscription.next(heartbeat: .seconds(30)) else { break }
                    heard.withLock { $0 += events.map(\.event.offset) }
                }
            }
        }
        while !hub.isFollowed(channel) { try await Task.sleep(for: .milliseconds(5)) }
        _ = try await nodes[0].events.publish(type: "t", data: .null, to: channel)
        // Announced on b (a noted head is not enough: b may not have read the event yet).
        while heard.withLock({ $0 }) != [1] { try await Task.sleep(for: .milliseconds(5)) }
        // Twenty at once: their notifications coalesce, yet b, knowing head 1, reads and announces
        // every event after it, once each and in order, not only the latest of each notification.
        try await withThrowingTaskGroup { group in
            for _ in 2...21 {
                group.addTask { _ = try await nodes[0].events.publish(type: "t", data: .null, to: channel) }
            }
            try await group.waitForAll()
        }
        try await hearing.value
        #expect(heard.withLock { $0 } == Array(1...21))
    }

    @Test(.timeLimit(.minutes(1))) func anEventWhoseNotificationIsLostIsFoundByTheBackstop() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let nodes = try await twoNodes(stores, backstop: .milliseconds(300))
        let channel = try #require(ChannelName("quiet"))
        let onB = try await nodes[1].follow(channel, until: 1)
        // Committed on a without any notification (as if it were lost).
        _ = try await EventLog(store: nodes[0].store, broker: LocalBroker(hub: Hub())).publish(
            type: "t",
            data: .null,
            to: channel
        )
        #expect(try await onB.value == [1])
    }

    @Test func migratingTwiceChangesNothing() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let store = try await stores.make(.init())
        let event = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: .now())
        try await store.migrate()
        let read = try await store.events(in: event.channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events == [event])
    }

    @Test func aLeaseHasOneHolderUntilItRunsOut() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let url = try await stores.makeSchema()
        let a = try await stores.open(url, node: "a")
        let b = try await stores.open(url, node: "b")
        #expect(try await a.acquireLease("janitor", for: .milliseconds(300)))
        #expect(try await !b.acquireLease("janitor", for: .seconds(10)))
        #expect(try await a.acquireLease("janitor", for: .milliseconds(300)))  // its holder renews it
        try await Task.sleep(for: .milliseconds(600))
        #expect(try await b.acquireLease("janitor", for: .seconds(10)))
        #expect(try await !a.acquireLease("janitor", for: .seconds(10)))
    }

    @Test func nodesTakingOverAtOnceTakeEachOrphanedCheckOnce() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let url = try await stores.makeSchema()
        // A node that created 40 checks and never beat (as if it died before its first beat).
        let dead = try await stores.open(url, node: "dead")
        var created: Set<CheckID> = []
        for _ in 0..<40 {
            created.insert(try await dead.createCheck(StoreConformance.delayCheck(), idempotency: nil).check.id)
        }
        let takers = [
            try await stores.open(url, node: "b"), try await stores.open(url, node: "c"),
            try await stores.open(url, node: "d"),
        ]
        for taker in takers { try await taker.heartbeat(startedAt: .now(), version: "test", address: "") }
        let taken = try await withThrowingTaskGroup(of: [CheckID].self) { group in
            for taker in takers {
                group.addTask {
                    var mine: [CheckID] = []
                    while true {
                        let batch = try await taker.takeOverChecks(silentFor: .seconds(10), limit: 3)
                        if batch.isEmpty { return mine }
                        mine += batch.map(\.id)
                    }
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(taken.flatMap { $0 }.count == 40)
        #expect(Set(taken.flatMap { $0 }) == created)
        // Taken checks now belong to a node that beats: nobody takes them again.
        #expect(try await takers[0].takeOverChecks(silentFor: .seconds(10), limit: 100).isEmpty)
    }

    @Test func aNodeTakesOverNoMoreChecksThanItsRunnerHasRoomFor() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let url = try await stores.makeSchema()
        let dead = try await stores.open(url, node: "dead")
        for _ in 0..<12 { _ = try await dead.createCheck(StoreConformance.delayCheck(), idempotency: nil) }
        // A runner with room for 7: the node takes 7, and leaves 5 with the silent node.
        let queued = Mutex(0)
        let node = ClusterNode(
            store: try await stores.open(url, node: "b"),
            startedAt: .now(),
            version: "test",
            address: { "" },
            logger: Stores.logger,
            room: { 7 - queued.withLock { $0 } },
            onTakeOver: { checks in queued.withLock { $0 += checks.count } }
        )
        await node.beat()
        #expect(queued.withLock { $0 } == 7)
        // The runner ran them: the next beat takes the rest.
        queued.withLock { $0 = 0 }
        await node.beat()
        #expect(queued.withLock { $0 } == 5)
    }

    @Test(.timeLimit(.minutes(1))) func anUnreachableDatabaseIsUnavailableNotInternal() async throws {
        var url = try PostgresURL(try serverURL())
        url.port = 1  // nothing listens there
        let store = PostgresStore(configuration: url.client(connections: 1), retention: .init(), logger: Stores.logger)
        let pool = Task { await store.run() }
        defer { pool.cancel() }
        let channel = try #require(ChannelName("c"))
        do {
            _ = try await store.append(type: "t", data: "1", to: channel, at: .now())
            Issue.record("an append to an unreachable database succeeded")
        } catch {
            let mapped = try #require(HeraldError(error), "\(error)")
            #expect(mapped.code == .unavailable && mapped.retryAfter == 1)
        }
    }

    @Test func aURLNamesTheServer() throws {
        let url = try PostgresURL(
            "postgres://herald:s%40cret@db.example:6543/events?sslmode=disable&search_path=tenant"
        )
        let configuration = url.client(connections: 4)
        #expect(configuration.host == "db.example" && configuration.port == 6543)
        #expect(configuration.username == "herald" && configuration.password == "s@cret")
        #expect(configuration.database == "events" && configuration.options.maximumConnections == 4)
        #expect(configuration.options.additionalStartupParameters.contains { $0 == ("search_path", "tenant") })
        #expect(url.redacted == "postgres://herald@db.example:6543/events")
        #expect(throws: HeraldError.self) { try PostgresURL("mysql://x@y/z") }
        #expect(throws: HeraldError.self) { try PostgresURL("postgres://db.example/z") }
        #expect(throws: HeraldError.self) { try PostgresURL("postgres://u@db.example/z?sslmode=verify-full") }
    }
}
