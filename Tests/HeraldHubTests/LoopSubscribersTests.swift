import Foundation
import HeraldCore
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import HeraldHub

/// A loop that fans out or ticks reads its sockets between slices of streaming subscribers,
/// and hands held polls their events before it reads: checked on a real event loop, with a
/// socket that became readable while the round's (or the tick's) first slice ran.
@Suite(.timeLimit(.minutes(1))) struct LoopSubscribersTests {
    let channel = ChannelName("orders")!

    @Test func aFanOutToStreamsLetsTheLoopReadBetweenSlices() async throws {
        let log = try await fanOut(toPolls: false)
        let read = try #require(log.firstIndex(of: "read"))
        #expect(read < log.lastIndex(of: "receive")!, "the read waited for the whole round")
    }

    @Test func heldPollsAreAnsweredBeforeTheLoopReads() async throws {
        let log = try await fanOut(toPolls: true)
        let read = try #require(log.firstIndex(of: "read"))
        #expect(read > log.lastIndex(of: "receive")!, "a read came between the polls' answers")
    }

    @Test func aTickLetsTheLoopReadBetweenSlices() async throws {
        try await withSubscribers(answersOnce: false, writingOn: "tick") { _, log in
            // The first tick comes 250 ms after the first subscription.
            try await waitFor(log) { $0.filter { $0 == "tick" }.count >= Self.count && $0.contains("read") }
            let read = try #require(log.all.firstIndex(of: "read"))
            #expect(read < Self.count, "the read waited for the whole tick")
        }
    }

    /// A tick that takes longer than the tick's period (here 640 subscribers at 0.5 ms each)
    /// ends before the next begins: the one due meanwhile is skipped, not interleaved.
    @Test func aSlowTickIsNotOverlappedByTheNext() async throws {
        try await withSubscribers(answersOnce: false, writingOn: "none", tickCost: 0.000_5) { _, log in
            try await waitFor(log) { $0.filter { $0 == "tick" }.count >= 2 * Self.count }
            let instants = log.tickInstants
            #expect(zip(instants, instants.dropFirst()).allSatisfy { $0 <= $1 }, "two ticks' slices interleaved")
        }
    }

    /// An event announced during a round (here by its first subscriber) reaches every
    /// subscriber in the round after, in order: the round's end finds it in the inbox.
    @Test func anEventAnnouncedDuringARoundFollowsInTheNext() async throws {
        let second = Event(channel: channel, offset: 2, epoch: Epoch("e"), type: "t", time: .now(), data: "null")
        let hub = Hub()
        let publisher = Trigger(kind: "receive") { hub.publish(second) }
        try await withSubscribers(answersOnce: false, writingOn: "none", hub: hub, also: publisher) { hub, log in
            hub.publish(Event(channel: channel, offset: 1, epoch: Epoch("e"), type: "t", time: .now(), data: "null"))
            try await waitFor(log) { $0.filter { $0 == "receive" }.count == 2 * Self.count }
            let offsets = log.all.filter { $0.hasPrefix("offsets") }
            #expect(offsets.count == 2 * Self.count)
            #expect(
                offsets.prefix(Self.count).allSatisfy { $0 == "offsets 1" },
                "the first round carried the second event"
            )
            #expect(offsets.suffix(Self.count).allSatisfy { $0 == "offsets 2" })
        }
    }

    /// Twenty slices' worth of subscribers (32 each).
    static let count = 640

    /// Publishes one event to `count` recorders. Returns the log once every recorder received it
    /// and the loop read the socket.
    private func fanOut(toPolls: Bool) async throws -> [String] {
        try await withSubscribers(answersOnce: toPolls, writingOn: "receive") { hub, log in
            hub.publish(Event(channel: channel, offset: 1, epoch: Epoch("e"), type: "t", time: .now(), data: "null"))
            try await waitFor(log) { $0.filter { $0 == "receive" }.count == Self.count && $0.contains("read") }
            return log.all.filter { $0 == "receive" || $0 == "read" }
        }
    }

    /// `count` recorders subscribed to the channel on a loop that also holds one end of a TCP
    /// connection. The first recorder called for `kind` ("receive" or "tick") has the other
    /// end, on another loop, send a byte, and waits long enough for it to arrive: the socket is
    /// readable from then on, and the loop logs "read" once it polls.
    private func withSubscribers<Value>(
        answersOnce: Bool,
        writingOn kind: String,
        hub: Hub = Hub(),
        also other: Trigger? = nil,
        tickCost: TimeInterval = 0,
        _ body: (Hub, Log) async throws -> Value
    ) async throws -> Value {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let clientGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let log = Log()
        let accepted = loop.makePromise(of: Void.self)
        let server = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ReadLogger(log: log, active: accepted))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let client = try await ClientBootstrap(group: clientGroup).connect(to: server.localAddress!).get()
        try await accepted.futureResult.get()
        let trigger = Trigger(kind: kind) {
            // Blocks this loop until the other has written the byte, then lets loopback deliver
            // it (the kernel may defer that to its softirq thread under load).
            let written = DispatchSemaphore(value: 0)
            client.writeAndFlush(ByteBuffer(string: "x")).whenComplete { _ in written.signal() }
            written.wait()
            Thread.sleep(forTimeInterval: 0.01)
        }
        let recorders = (0..<Self.count).map { _ in
            Recorder(
                log: log,
                answersOnce: answersOnce,
                triggers: [trigger] + (other.map { [$0] } ?? []),
                tickCost: tickCost
            )
        }
        let result: Result<Value, any Error>
        do {
            try await loop.submit { for recorder in recorders { _ = hub.subscribe(recorder, to: channel, on: loop) } }
                .get()
            result = .success(try await body(hub, log))
        } catch {
            result = .failure(error)
        }
        try? await client.close()
        try? await server.close()
        try? await group.shutdownGracefully()
        try? await clientGroup.shutdownGracefully()
        return try result.get()
    }

    private func waitFor(_ log: Log, _ done: ([String]) -> Bool) async throws {
        for _ in 0..<500 {
            if done(log.all) { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        Issue.record("timed out: \(log.all.count) entries")
    }
}

/// What happened on the loop, in order.
private final class Log: Sendable {
    private let entries = Mutex<[String]>([])

    private let instants = Mutex<[ContinuousClock.Instant]>([])

    func append(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
    /// The instant of each tick call, in call order.
    func tick(at now: ContinuousClock.Instant) { instants.withLock { $0.append(now) } }
    var tickInstants: [ContinuousClock.Instant] { instants.withLock { $0 } }
}

/// Runs its action once, at the first call of its kind to any recorder.
private final class Trigger: Sendable {
    let kind: String
    let action: @Sendable () -> Void
    private let fired = Mutex(false)

    init(kind: String, action: @escaping @Sendable () -> Void) {
        self.kind = kind
        self.action = action
    }

    func called(_ kind: String) {
        guard kind == self.kind else { return }
        let isFirst = fired.withLock { fired in
            defer { fired = true }
            return !fired
        }
        if isFirst { action() }
    }
}

/// Logs what the hub hands it.
private final class Recorder: LoopSubscriber, Sendable {
    let log: Log
    let answersOnce: Bool
    let triggers: [Trigger]
    /// Seconds each tick takes.
    let tickCost: TimeInterval

    init(log: Log, answersOnce: Bool, triggers: [Trigger], tickCost: TimeInterval) {
        self.log = log
        self.answersOnce = answersOnce
        self.triggers = triggers
        self.tickCost = tickCost
    }

    func receive(_ events: [EncodedEvent]) {
        log.append("offsets " + events.map { "\($0.event.offset)" }.joined(separator: ","))
        record("receive")
    }
    func tick(_ now: ContinuousClock.Instant) {
        if tickCost > 0 { Thread.sleep(forTimeInterval: tickCost) }
        log.tick(at: now)
        record("tick")
    }
    func resync() {}
    func drain() {}

    private func record(_ kind: String) {
        log.append(kind)
        for trigger in triggers { trigger.called(kind) }
    }
}

/// Logs "read" when its connection reads.
private final class ReadLogger: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let log: Log
    let active: EventLoopPromise<Void>

    init(log: Log, active: EventLoopPromise<Void>) {
        self.log = log
        self.active = active
    }

    func channelActive(context: ChannelHandlerContext) {
        active.succeed()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        log.append("read")
    }
}
