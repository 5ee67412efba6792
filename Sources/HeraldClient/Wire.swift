internal import AsyncHTTPClient
internal import Foundation
internal import HTTPTypes
internal import HummingbirdWSClient
internal import Logging
internal import NIOCore
internal import NIOFoundationCompat
internal import NIOHTTP1
internal import Synchronization

/// What a transport reads off the wire, in the terms of every transport.
enum Wire: Sendable, Hashable {
    /// Proof that messages flow; on a channel, where its stream continues after.
    case welcome(channel: String?, epoch: String, next: Int)
    /// The position on `channel` was lost; what is kept, up to `next`, follows.
    case reset(channel: String, epoch: String, next: Int)
    case event(ChannelEvent)
    case heartbeat

    /// One JSON message of a stream opened with `welcome=1` (an SSE `data:`, an NDJSON line),
    /// decoded once: markers and events share their fields.
    init(streamMessage text: Substring) throws {
        let message = try JSONDecoder().decode(Message.self, from: Data(text.utf8))
        let (channel, epoch) = (message.channel, message.epoch ?? "")
        switch message.type {
        case "herald.welcome": self = .welcome(channel: channel, epoch: epoch, next: message.next ?? 0)
        case "herald.reset": self = .reset(channel: channel ?? "", epoch: epoch, next: message.next ?? 0)
        case "herald.heartbeat": self = .heartbeat
        default:
            guard let channel, let offset = message.offset, let time = message.time else {
                throw HeraldClientError("an event without channel, offset or time: \(text)")
            }
            self = .event(
                ChannelEvent(
                    channel: channel,
                    offset: offset,
                    epoch: epoch,
                    type: message.type,
                    time: time,
                    data: message.data ?? .null
                )
            )
        }
    }

    private struct Message: Decodable {
        var type: String
        var channel: String?
        var epoch: String?
        var next: Int?
        var offset: Int?
        var time: String?
        var data: HeraldJSON?
    }
}

/// Where Herald is and how transports reach it.
struct Endpoint: Sendable {
    var base: String
    var httpClient: HTTPClient
    var heartbeat: Int
    var pollWait: Int
    var logger: Logger
    /// A client token, sent as `Authorization: Bearer` on every request and upgrade.
    var token: String?
    /// The last `Retry-After` a refusal carried; the reconnect loop waits at least that long.
    var retryHint = RetryHint()

    /// A GET of `url`, with the token.
    func request(_ url: String) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        return request
    }

    /// The error for a refused stream or poll, after noting its `Retry-After` (429, 503).
    func refusal(_ response: HTTPClientResponse, _ what: String) -> HeraldClientError {
        let retryAfter = response.headers.first(name: "Retry-After").flatMap(Int.init).map { Duration.seconds($0) }
        if let retryAfter { retryHint.note(retryAfter) }
        let error = HeraldClientError(status: Int(response.status.code), what, retryAfter: retryAfter)
        // No token or a refused one: retrying cannot help.
        if response.status == .unauthorized || response.status == .forbidden { retryHint.fail(error) }
        return error
    }

    func channelURL(_ channel: String, _ query: [(String, String)]) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-_.")
        let name = channel.addingPercentEncoding(withAllowedCharacters: allowed) ?? channel
        let search = query.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0.1)" }
        return base + "/api/v1/channels/" + name + "/events"
            + (search.isEmpty ? "" : "?" + search.joined(separator: "&"))
    }

    static func positionQuery(_ position: Position?) -> [(String, String)] {
        guard let position else { return [] }
        return [("since", String(position.offset))] + (position.epoch.isEmpty ? [] : [("epoch", position.epoch)])
    }

    /// Messages a connection buffers ahead of the follower before it is dropped.
    static let wireBuffer = 4096

    /// Hands `wire` to the follower; when the follower is that far behind, the connection
    /// ends instead of dropping it, and the client reconnects from the follower's positions,
    /// so the server sends again whatever had not been taken.
    static func send(_ continuation: AsyncThrowingStream<Wire, any Error>.Continuation, _ wire: Wire) throws {
        if case .dropped = continuation.yield(wire) {
            throw HeraldClientError("fell \(wireBuffer) messages behind the connection: reconnecting")
        }
    }

    /// Opens `transport` for `channels`; the stream ends (or throws) when the connection does.
    func open(_ transport: Transport, channels: [String: Position?]) -> AsyncThrowingStream<Wire, any Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(
            of: Wire.self,
            bufferingPolicy: .bufferingOldest(Self.wireBuffer)
        )
        let task = Task {
            do {
                switch transport {
                case .websocket: try await webSocket(channels, continuation)
                case .sse: try await perChannel(channels) { try await self.stream($0, $1, format: "sse", continuation) }
                case .ndjson:
                    try await perChannel(channels) { try await self.stream($0, $1, format: "ndjson", continuation) }
                case .longPolling: try await perChannel(channels) { try await self.poll($0, $1, continuation) }
                }
                continuation.finish(throwing: HeraldClientError("\(transport.rawValue) connection ended"))
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    /// One task per channel; the first to end ends them all.
    private func perChannel(
        _ channels: [String: Position?],
        _ follow: @escaping @Sendable (String, Position?) async throws -> Void
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (channel, position) in channels {
                group.addTask { try await follow(channel, position) }
            }
            try await group.next()
            group.cancelAll()
        }
        if channels.isEmpty { try await Task.sleep(for: .seconds(86_400 * 365)) }
    }

    /// SSE or NDJSON, opened with `welcome=1`, read line by line.
    private func stream(
        _ channel: String,
        _ position: Position?,
        format: String,
        _ continuation: AsyncThrowingStream<Wire, any Error>.Continuation
    ) async throws {
        let query =
            [("format", format), ("welcome", "1"), ("heartbeat", String(heartbeat))] + Self.positionQuery(position)
        let response = try await httpClient.execute(
            request(channelURL(channel, query)),
            timeout: .hours(24 * 365),
            logger: logger
        )
        guard response.status == .ok else { throw refusal(response, "stream refused") }
        var pending = ""
        var data = ""
        for try await chunk in response.body {
            pending += String(buffer: chunk)
            // Complete lines now; the unfinished last one waits for the next chunk.
            var lines = pending.split(separator: "\n", omittingEmptySubsequences: false)
            pending = String(lines.removeLast())
            for line in lines {
                if format == "ndjson" {
                    if !line.isEmpty { try Self.send(continuation, try Wire(streamMessage: line)) }
                } else if line.hasPrefix("data: ") {
                    data += line.dropFirst(6)
                } else if line.isEmpty, !data.isEmpty {
                    try Self.send(continuation, try Wire(streamMessage: Substring(data)))
                    data = ""
                }
            }
        }
        // A check's stream ends after its terminal event: that is not a cut.
        if !channel.hasPrefix("check:") { throw HeraldClientError("\(format) stream of \(channel) ended") }
        try await Task.sleep(for: .seconds(86_400 * 365))
    }

    /// Long polling: the first answer at once (the welcome), then held polls.
    private func poll(
        _ channel: String,
        _ start: Position?,
        _ continuation: AsyncThrowingStream<Wire, any Error>.Continuation
    ) async throws {
        var position = start
        var first = true
        while true {
            let wait = first ? 0 : pollWait
            let query = (wait > 0 ? [("wait", String(wait))] : []) + Self.positionQuery(position)
            let response = try await httpClient.execute(
                request(channelURL(channel, query)),
                timeout: .seconds(Int64(wait + 10)),
                logger: logger
            )
            let body = try await response.body.collect(upTo: 16 << 20)
            guard response.status == .ok else { throw refusal(response, "poll refused") }
            let answer = try JSONDecoder().decode(PollAnswer.self, from: Data(buffer: body))
            if first {
                let before = answer.events.first.map { $0.offset - 1 } ?? answer.next
                try Self.send(continuation, .welcome(channel: channel, epoch: answer.epoch, next: before))
            }
            if !answer.recovered && position != nil {
                try Self.send(continuation, .reset(channel: channel, epoch: answer.epoch, next: answer.next))
            }
            for event in answer.events { try Self.send(continuation, .event(event)) }
            position = Position(epoch: answer.epoch, offset: answer.next)
            first = false
        }
    }

    private struct PollAnswer: Decodable {
        var epoch: String
        var recovered: Bool
        var next: Int
        var events: [ChannelEvent]
    }

    /// One WebSocket for every channel: a ping first (its pong is the welcome), then subscribe.
    private func webSocket(
        _ channels: [String: Position?],
        _ continuation: AsyncThrowingStream<Wire, any Error>.Continuation
    ) async throws {
        let url = base.replacingOccurrences(of: "http", with: "ws", options: .anchored) + "/api/v1/ws"
        let close = try await WebSocketClient.connect(
            url: url,
            configuration: .init(
                maxFrameSize: 1 << 20,
                additionalHeaders: token.map { [.authorization: "Bearer \($0)"] } ?? [:]
            ),
            logger: logger
        ) {
            inbound,
            outbound,
            _ in
            try await outbound.writeTextMessage(#"{"op":"ping","id":0}"#)
            for try await message in inbound.messages(maxSize: 1 << 20) {
                guard case .text(let text) = message else { continue }
                let frame = try JSONDecoder().decode(ServerFrame.self, from: Data(text.utf8))
                switch frame.op {
                case "pong" where frame.id == 0:
                    try Self.send(continuation, .welcome(channel: nil, epoch: "", next: 0))
                    for (index, (channel, position)) in channels.enumerated() {
                        let subscribe = SubscribeFrame(
                            channel: channel,
                            since: position?.offset,
                            epoch: position.flatMap { $0.epoch.isEmpty ? nil : $0.epoch },
                            id: index + 1
                        )
                        try await outbound.writeTextMessage(
                            String(decoding: try JSONEncoder().encode(subscribe), as: UTF8.self)
                        )
                    }
                case "subscribed", "reset":  // "reset": the loss signal on a live subscription
                    let (channel, epoch, next) = (frame.channel ?? "", frame.epoch ?? "", frame.offset ?? 0)
                    try Self.send(
                        continuation,
                        frame.recovered == false
                            ? .reset(channel: channel, epoch: epoch, next: next)
                            : .welcome(channel: channel, epoch: epoch, next: next)
                    )
                case "event":
                    try Self.send(
                        continuation,
                        .event(try JSONDecoder().decode(ChannelEvent.self, from: Data(text.utf8)))
                    )
                case "error" where Self.refusalCodes.contains(frame.code ?? ""),
                    "expired":
                    // No token, a refused one, or one that expired: retrying cannot help.
                    let error = HeraldClientError(
                        status: frame.code == "channel_forbidden" ? 403 : 401,
                        "\(frame.code ?? "expired"): \(frame.message ?? "the token expired")"
                    )
                    retryHint.fail(error)
                    throw error
                case "error":
                    logger.warning("herald: \(frame.code ?? "error"): \(frame.message ?? "")")
                default:
                    try Self.send(continuation, .heartbeat)
                }
            }
        }
        throw HeraldClientError("WebSocket closed (\(close.map { "\($0.closeCode)" } ?? "no close frame"))")
    }

    /// The WebSocket error codes that refuse a subscription for good (for this client's token).
    static let refusalCodes: Set<String> = ["token_required", "token_invalid", "token_expired", "channel_forbidden"]

    private struct ServerFrame: Decodable {
        var op: String
        var id: Int?
        var channel: String?
        var epoch: String?
        var offset: Int?
        var recovered: Bool?
        var code: String?
        var message: String?
    }

    private struct SubscribeFrame: Encodable {
        var op = "subscribe"
        var channel: String
        var since: Int?
        var epoch: String?
        var id: Int
    }
}

/// What refusals told the reconnect loop: the longest `Retry-After` since it last looked, and
/// a refusal no retry can help (401, 403).
final class RetryHint: Sendable {
    private let value = Mutex<(wait: Duration?, fatal: HeraldClientError?)>((nil, nil))

    func note(_ wait: Duration) { value.withLock { $0.wait = max($0.wait ?? .zero, wait) } }

    func fail(_ error: HeraldClientError) { value.withLock { $0.fatal = error } }

    /// The refusal that ends following, if there was one.
    var fatal: HeraldClientError? { value.withLock { $0.fatal } }

    /// The hint, cleared.
    func take() -> Duration? {
        value.withLock { value in
            defer { value.wait = nil }
            return value.wait
        }
    }
}
