public import AsyncHTTPClient
internal import Foundation
public import Logging
internal import NIOCore
internal import NIOFoundationCompat
internal import NIOHTTP1

/// A client of one Herald server: its REST API, and channels followed over the best transport
/// that works, with the negotiation of herald.js.
///
///     let herald = HeraldClient(url: "http://127.0.0.1:8080")
///     let check = try await herald.createCheck(kind: "delay", params: ["ms": .number(500)])
///     for try await update in herald.events(["check:\(check.id)": Position(offset: 0)]) { ... }
///
/// ``events(_:transports:)`` races the transports (the best at once, the next after
/// ``Timing/raceDelay``), keeps the first whose messages flow, resumes every channel from its
/// last `(epoch, offset)` after a cut with capped, jittered exponential backoff, and never
/// yields an event twice.
public struct HeraldClient: Sendable {
    /// The timers of the negotiation.
    public struct Timing: Sendable {
        /// Between starting one candidate transport and the next.
        public var raceDelay: Duration = .milliseconds(300)
        /// A candidate that shows no message within this loses.
        public var verifyTimeout: Duration = .seconds(5)
        /// Before the first reconnect; doubles per failed attempt up to `backoffMax`, with jitter.
        public var backoffInitial: Duration = .milliseconds(250)
        public var backoffMax: Duration = .seconds(10)
        /// Seconds of the heartbeat streams are asked for, and of a long poll's hold.
        public var heartbeat = 15
        public var pollWait = 25

        public init() {}
    }

    public let url: String
    public let apiKey: String?
    /// A client token (docs/security.md): sent with every request, stream and WebSocket.
    public let token: String?
    public var timing = Timing()
    let httpClient: HTTPClient
    let logger: Logger

    public init(
        url: String,
        apiKey: String? = nil,
        token: String? = nil,
        httpClient: HTTPClient = .shared,
        logger: Logger? = nil
    ) {
        self.url = url.hasSuffix("/") ? String(url.dropLast()) : url
        self.apiKey = apiKey
        self.token = token
        self.httpClient = httpClient
        self.logger = logger ?? Logger(label: "herald.client", factory: { _ in SwiftLogNoOpLogHandler() })
    }

    // MARK: REST

    /// `POST /api/v1/checks`: the created check (its `id` is `check["id"]`).
    public func createCheck(
        kind: String,
        params: HeraldJSON = .object([:]),
        idempotencyKey: String? = nil
    ) async throws -> HeraldJSON {
        var headers = HTTPHeaders()
        if let idempotencyKey { headers.add(name: "Idempotency-Key", value: idempotencyKey) }
        return try await send(
            "POST",
            "/api/v1/checks",
            body: .object(["kind": .string(kind), "params": params]),
            headers: headers,
            as: HeraldJSON.self
        )
    }

    /// `GET /api/v1/checks/{id}`.
    public func check(_ id: String) async throws -> HeraldJSON {
        try await send("GET", "/api/v1/checks/\(id)", as: HeraldJSON.self)
    }

    /// `POST /api/v1/channels/{name}/events` with the API key: the published event.
    public func publish(_ channel: String, type: String, data: HeraldJSON) async throws -> ChannelEvent {
        try await send(
            "POST",
            "/api/v1/channels/\(channel)/events",
            body: .object(["type": .string(type), "data": data]),
            as: ChannelEvent.self
        )
    }

    /// Sends a request and decodes the answer as `T`; an error answer throws its problem's detail.
    private func send<T: Decodable>(
        _ method: String,
        _ path: String,
        body: HeraldJSON? = nil,
        headers: HTTPHeaders = [:],
        as: T.Type
    ) async throws -> T {
        var request = HTTPClientRequest(url: url + path)
        request.method = .init(rawValue: method)
        request.headers = headers
        if let credential = apiKey ?? token {
            request.headers.add(name: "Authorization", value: "Bearer \(credential)")
        }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: body.description))
        }
        let response = try await httpClient.execute(request, timeout: .seconds(30), logger: logger)
        let bytes = Data(buffer: try await response.body.collect(upTo: 16 << 20))
        guard (200..<300).contains(response.status.code) else {
            let problem = try? JSONDecoder().decode(HeraldJSON.self, from: bytes)
            throw HeraldClientError(
                status: Int(response.status.code),
                problem?["detail"]?.string ?? "\(response.status)",
                retryAfter: response.headers.first(name: "Retry-After").flatMap(Int.init).map { .seconds($0) }
            )
        }
        return try JSONDecoder().decode(T.self, from: bytes)
    }

    // MARK: Events

    /// Follows `channels`, each from its position (`nil`: from now; a `check:` channel from its
    /// start), over the first of `transports` whose messages flow. Ends when every followed
    /// check has ended, or when the consumer stops; a cut is never the end.
    public func events(
        _ channels: [String: Position?],
        transports: [Transport] = Transport.allCases
    ) -> AsyncThrowingStream<HeraldUpdate, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(
            of: HeraldUpdate.self,
            bufferingPolicy: .bufferingOldest(Self.updateBuffer)
        )
        let endpoint = Endpoint(
            base: url,
            httpClient: httpClient,
            heartbeat: timing.heartbeat,
            pollWait: timing.pollWait,
            logger: logger,
            token: apiKey ?? token
        )
        let task = Task { [timing] in
            var follower = Follower(channels: channels)
            var attempt = 0
            while !Task.isCancelled && !follower.isFinished {
                guard let (transport, wires) = await Self.race(transports, follower.positions, endpoint, timing) else {
                    if let fatal = endpoint.retryHint.fatal { return continuation.finish(throwing: fatal) }
                    try? await Task.sleep(for: Self.backoff(attempt, timing, at: endpoint.retryHint.take()))
                    attempt += 1
                    continue
                }
                attempt = 0
                continuation.yield(.transport(transport))
                do {
                    wiring: for try await wire in wires {
                        let before = follower
                        guard let updates = follower.take(wire) else {
                            // A hole: the server still has what is missing; ask from the position.
                            continuation.yield(.disconnected(reason: "a hole before \(wire): resuming"))
                            break wiring
                        }
                        for update in updates {
                            if case .dropped = continuation.yield(update) {
                                // The consumer is that far behind: take nothing more until it
                                // catches up, then resume from the last update it was given.
                                follower = before
                                attempt += 1
                                break wiring
                            }
                        }
                        if follower.isFinished { break }
                    }
                } catch {
                    if !Task.isCancelled { continuation.yield(.disconnected(reason: "\(error)")) }
                }
                if follower.isFinished || Task.isCancelled { break }
                if let fatal = endpoint.retryHint.fatal { return continuation.finish(throwing: fatal) }
                try? await Task.sleep(for: Self.backoff(attempt, timing, at: endpoint.retryHint.take()))
                attempt += 1
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// Updates buffered for a consumer before the client stops taking messages (and resumes
    /// from the last update given once the consumer catches up): never a silent drop.
    static let updateBuffer = 4096

    /// The wait before the next attempt: capped, jittered exponential backoff, and never less
    /// than a `Retry-After` the server asked for (`least`).
    static func backoff(_ attempt: Int, _ timing: Timing, at least: Duration? = nil) -> Duration {
        let ceiling = min(timing.backoffMax, timing.backoffInitial * (1 << min(attempt, 20)))
        return max(ceiling * Double.random(in: 0.5...1), least ?? .zero)
    }

    /// Starts the candidates `raceDelay` apart; the first whose first message arrives within
    /// `verifyTimeout` wins and the others are dropped.
    static func race(
        _ transports: [Transport],
        _ positions: [String: Position?],
        _ endpoint: Endpoint,
        _ timing: Timing
    ) async -> (Transport, AsyncThrowingStream<Wire, any Error>)? {
        await withTaskGroup(of: (Transport, AsyncThrowingStream<Wire, any Error>)?.self) { group in
            for (index, transport) in transports.enumerated() {
                group.addTask {
                    try? await Task.sleep(for: timing.raceDelay * index)
                    guard !Task.isCancelled else { return nil }
                    let wires = endpoint.open(transport, channels: positions)
                    return await verified(wires, within: timing.verifyTimeout) ? (transport, wires) : nil
                }
            }
            for await result in group {
                if let result {
                    group.cancelAll()
                    return result
                }
            }
            return nil
        }
    }

    /// Whether the first message of `wires` is a welcome that arrives in time.
    static func verified(_ wires: AsyncThrowingStream<Wire, any Error>, within timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                var iterator = wires.makeAsyncIterator()
                guard case .welcome? = try? await iterator.next() else { return false }
                return true
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }
}

/// The positions of followed channels: every event moves one forward, a duplicate is dropped,
/// a hole sends the client back to the server from its position, a reset lets what is kept
/// through and says `gap` once.
struct Follower {
    private(set) var positions: [String: Position?]
    /// After a reset, events up to this offset are what the server keeps: let them through.
    private var keptUntil: [String: Int] = [:]
    private var ended: Set<String> = []
    private let checks: Set<String>

    init(channels: [String: Position?]) {
        var positions = channels
        // A check's few events are all kept: follow it from its start unless told otherwise.
        for (channel, position) in channels where position == nil && channel.hasPrefix("check:") {
            positions[channel] = Position(offset: 0)
        }
        self.positions = positions
        self.checks = Set(channels.keys.filter { $0.hasPrefix("check:") })
    }

    /// Every check followed has ended, and nothing else is followed.
    var isFinished: Bool {
        !checks.isEmpty && checks.count == positions.count && ended == checks
    }

    /// The updates `wire` makes, or nil for a hole (an event past the next offset of its
    /// epoch): the connection must resume from ``positions`` so the server fills it.
    mutating func take(_ wire: Wire) -> [HeraldUpdate]? {
        switch wire {
        case .heartbeat, .welcome(channel: nil, _, _):
            return []
        case .welcome(let channel?, let epoch, let next):
            if let position = positions[channel], position == nil {
                positions[channel] = Position(epoch: epoch, offset: next)
            }
            return []
        case .reset(let channel, let epoch, let next):
            guard positions[channel] != nil else { return [] }
            positions[channel] = Position(epoch: epoch, offset: next)
            keptUntil[channel] = next
            return [.gap(channel: channel, epoch: epoch)]
        case .event(let event):
            guard let known = positions[event.channel] else { return [] }
            let kept = keptUntil[event.channel].map { event.offset <= $0 } ?? false
            if !kept, let position = known, position.epoch.isEmpty || position.epoch == event.epoch,
                event.offset <= position.offset
            {
                return []  // a duplicate
            }
            if !kept, let position = known, position.epoch == event.epoch, event.offset > position.offset + 1 {
                return nil  // a hole
            }
            let until = keptUntil[event.channel] ?? 0
            if event.offset >= until { keptUntil[event.channel] = nil }
            positions[event.channel] = Position(epoch: event.epoch, offset: max(event.offset, kept ? until : 0))
            if event.endsCheck { ended.insert(event.channel) }
            return [.event(event)]
        }
    }
}
