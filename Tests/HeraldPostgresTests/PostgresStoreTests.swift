import Foundation
import HeraldCore
import HeraldStore
import HeraldTesting
import Logging
import PostgresNIO
import Synchronization
import Testing

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
        let url = try serverURL()
        let schema = "herald_test_\(UUID().uuidString.prefix(8).lowercased())"
        let logger = Logger(label: "herald.test.postgres")
        let admin = try PostgresStore(
            configuration: .init(url: url),
            retention: retention,
            logger: logger
        )
        let adminTask = Task { await admin.run() }
        defer { adminTask.cancel() }
        try await admin.client.query("CREATE SCHEMA \(unescaped: schema)")
        var configuration = try PostgresClient.Configuration(url: url)
        configuration.options.additionalStartupParameters.append(("search_path", schema))
        configuration.options.maximumConnections = 8
        let store = PostgresStore(configuration: configuration, retention: retention, logger: logger)
        running.withLock { $0.append(Task { await store.run() }) }
        try await store.migrate()
        return store
    }

    func stop() {
        for task in running.withLock({ $0 }) { task.cancel() }
    }
}

@Suite struct PostgresStoreTests {
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

    @Test func migratingTwiceChangesNothing() async throws {
        let stores = Stores()
        defer { stores.stop() }
        let store = try await stores.make(.init())
        let event = try await store.append(type: "t", data: "1", to: try #require(ChannelName("c")), at: .now())
        try await store.migrate()
        let read = try await store.events(in: event.channel, after: 0, epoch: nil, limit: 10)
        #expect(read.events == [event])
    }

    @Test func aURLNamesTheServer() throws {
        let configuration = try PostgresClient.Configuration(
            url: "postgres://herald:s%40cret@db.example:6543/events?sslmode=disable&search_path=tenant"
        )
        #expect(configuration.host == "db.example" && configuration.port == 6543)
        #expect(configuration.username == "herald" && configuration.password == "s@cret")
        #expect(configuration.database == "events")
        #expect(configuration.options.additionalStartupParameters.contains { $0 == ("search_path", "tenant") })
        #expect(throws: HeraldError.self) { try PostgresClient.Configuration(url: "mysql://x@y/z") }
        #expect(throws: HeraldError.self) { try PostgresClient.Configuration(url: "postgres://db.example/z") }
    }
}
