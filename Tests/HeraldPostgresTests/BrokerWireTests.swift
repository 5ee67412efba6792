import HeraldCore
import HeraldHub
import Testing

@testable import HeraldCluster

/// What the nodes of a cluster say to each other with `NOTIFY`: positions, never events.
@Suite struct BrokerWireTests {
    @Test func positionsAreSplitIntoPayloadsPostgreSQLAccepts() throws {
        let positions = try (1...2_000).map { n in
            (try #require(ChannelName("orders-\(n)")), Hub.Head(epoch: Epoch("e\(n % 7)"), offset: Offset(n)))
        }
        let payloads = PostgresBroker.payloads(node: "node-a", positions, everything: false)
        #expect(payloads.count > 1)
        var seen: [String] = []
        for payload in payloads {
            #expect(payload.utf8.count <= PostgresBroker.maxPayload)
            var lines = payload.split(separator: "\n")[...]
            #expect(lines.popFirst() == "node-a")
            seen += lines.map(String.init)
        }
        // Every position once, as `epoch offset channel`.
        #expect(seen.count == positions.count)
        #expect(Set(seen) == Set(positions.map { "\($0.1.epoch.rawValue) \($0.1.offset) \($0.0.rawValue)" }))
    }

    @Test func anOverflowAsksEveryNodeToCatchUp() {
        #expect(PostgresBroker.payloads(node: "a", [], everything: true) == ["a\n*"])
        #expect(PostgresBroker.payloads(node: "a", [], everything: false).isEmpty)
    }

    @Test func eachSchemaHasItsOwnNotificationChannel() {
        let schemas = ["tenant_a", "tenant_b", "Tenant-A", "tenanta", nil, String(repeating: "x", count: 100)]
        let names = schemas.map { PostgresBroker.notifyChannel(schema: $0) }
        #expect(names[0] == "herald_events_tenant_a" && names[4] == "herald_events_public")
        #expect(Set(names).count == names.count)  // "Tenant-A" and "tenanta" too
        #expect(names.allSatisfy { $0.utf8.count <= 63 })  // PostgreSQL's identifier limit
        #expect(names == schemas.map { PostgresBroker.notifyChannel(schema: $0) })  // stable
    }
}
