import Testing

@testable import HeraldClient

@Suite struct FollowerTests {
    func event(_ channel: String, _ offset: Int, epoch: String = "e1", type: String = "t") -> Wire {
        .event(ChannelEvent(channel: channel, offset: offset, epoch: epoch, type: type, time: "", data: .null))
    }

    func offsets(_ updates: [HeraldUpdate]?) -> [Int] {
        (updates ?? []).compactMap { if case .event(let event) = $0 { event.offset } else { nil } }
    }

    @Test func aDuplicateFromAResumedTransportIsDropped() {
        var follower = Follower(channels: ["orders": Position(epoch: "e1", offset: 2)])
        #expect(offsets(follower.take(event("orders", 3))) == [3])
        #expect(offsets(follower.take(event("orders", 3))) == [])
        #expect(offsets(follower.take(event("orders", 2))) == [])
        #expect(follower.positions["orders"] == Position(epoch: "e1", offset: 3))
    }

    @Test func fromNowTakesThePositionOfTheWelcome() {
        var follower = Follower(channels: ["orders": nil])
        _ = follower.take(.welcome(channel: "orders", epoch: "e1", next: 7))
        #expect(follower.positions["orders"] == Position(epoch: "e1", offset: 7))
        #expect(offsets(follower.take(event("orders", 8))) == [8])
    }

    @Test func aResetSaysGapOnceAndLetsTheKeptEventsThrough() {
        var follower = Follower(channels: ["orders": Position(epoch: "old", offset: 3)])
        let updates = follower.take(.reset(channel: "orders", epoch: "e2", next: 5))
        #expect(updates == [.gap(channel: "orders", epoch: "e2")])
        let kept = (1...5).flatMap { follower.take(event("orders", $0, epoch: "e2")) ?? [] }
        #expect(offsets(kept) == [1, 2, 3, 4, 5])
        #expect(offsets(follower.take(event("orders", 5, epoch: "e2"))) == [])
        #expect(offsets(follower.take(event("orders", 6, epoch: "e2"))) == [6])
    }

    @Test func aHoleIsNotDeliveredAndKeepsThePositionToResumeFrom() {
        var follower = Follower(channels: ["orders": Position(epoch: "e1", offset: 2)])
        #expect(follower.take(event("orders", 5)) == nil)
        #expect(follower.positions["orders"] == Position(epoch: "e1", offset: 2))
        #expect(offsets(follower.take(event("orders", 3))) == [3])
    }

    @Test func aConnectionThatFallsBehindEndsInsteadOfDroppingAMessage() throws {
        let (stream, continuation) = AsyncThrowingStream.makeStream(
            of: Wire.self,
            bufferingPolicy: .bufferingOldest(Endpoint.wireBuffer)
        )
        for _ in 0..<Endpoint.wireBuffer { try Endpoint.send(continuation, .heartbeat) }
        #expect(throws: HeraldClientError.self) { try Endpoint.send(continuation, .heartbeat) }
        _ = stream
    }

    @Test func aCheckIsFollowedFromItsStartAndFinishesWithItsLastEvent() {
        var follower = Follower(channels: ["check:abc": nil])
        #expect(follower.positions["check:abc"] == Position(offset: 0))
        _ = follower.take(event("check:abc", 1, type: "check.created"))
        #expect(!follower.isFinished)
        _ = follower.take(event("check:abc", 2, type: "check.done"))
        #expect(follower.isFinished)
    }

    @Test func theBackoffIsCappedAndJittered() {
        let timing = HeraldClient.Timing()
        for attempt in 0..<40 {
            let delay = HeraldClient.backoff(attempt, timing)
            #expect(delay <= timing.backoffMax)
            #expect(delay >= min(timing.backoffMax, timing.backoffInitial * (1 << min(attempt, 20))) * 0.5)
        }
    }

    @Test func aRetryAfterIsTheLeastWait() {
        let timing = HeraldClient.Timing()
        #expect(HeraldClient.backoff(0, timing, at: .seconds(30)) == .seconds(30))
        #expect(HeraldClient.backoff(40, timing, at: .seconds(1)) >= timing.backoffMax * 0.5)
    }
}
