internal import Foundation
package import GRPCCore
internal import HTTPTypes
internal import HeraldCore
internal import HeraldHTTP
package import Hummingbird
internal import NIOCore
internal import ServiceLifecycle
internal import Synchronization

/// gRPC-Web on the HTTP port, as a gRPC `ServerTransport`: a browser calls
/// `POST /herald.v1.Herald/{Method}` with `application/grpc-web+proto` or
/// `application/grpc-web-text` (base64) and gets the same service, with no proxy in between.
///
/// Each call becomes one RPC stream of a `GRPCServer` running the same ``HeraldService``, so
/// deadlines (`grpc-timeout`), status codes and cancellation are gRPC's own. The request's
/// messages are read whole first (unary and server streaming send one; a browser cannot
/// stream a request body), the response is written as it comes: each message as a data
/// frame, then the status and the trailers as a trailer frame (the initial metadata goes with
/// the trailers, since the HTTP headers are sent before the call starts). In text mode each
/// frame is base64 on its own. A client that goes away is noticed at the next write.
package final class GRPCWebTransport: ServerTransport {
    package typealias Bytes = [UInt8]
    private typealias Handler =
        @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void

    private struct State {
        var handler: Handler?
        var isStopped = false
        var listener: CheckedContinuation<Void, Never>?
    }

    /// The paths served: every method of `herald.v1.Herald`.
    package static let routePath = "/herald.v1.Herald/{method}"

    private let state = Mutex(State())
    private let maxMessageBytes: Int

    /// The largest request body that carries one message of `maxMessageBytes`: base64 is 4/3
    /// of its bytes, and each message has a 5-byte frame header.
    package static func maxBodyBytes(forMessageBytes maxMessageBytes: Int) -> Int {
        (maxMessageBytes + 5) * 4 / 3 + 4
    }

    package init(maxMessageBytes: Int) {
        self.maxMessageBytes = maxMessageBytes
    }

    package func listen(
        streamHandler: @escaping @Sendable (RPCStream<Inbound, Outbound>, ServerContext) async -> Void
    ) async throws {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (listener: CheckedContinuation<Void, Never>) in
                let stopped = state.withLock { state in
                    if state.isStopped { return true }
                    state.handler = streamHandler
                    state.listener = listener
                    return false
                }
                if stopped { listener.resume() }
            }
        } onCancel: {
            beginGracefulShutdown()
        }
    }

    package func beginGracefulShutdown() {
        let listener = state.withLock { state in
            state.isStopped = true
            state.handler = nil
            defer { state.listener = nil }
            return state.listener
        }
        listener?.resume()
    }

    /// Adds the gRPC-Web route to `router`.
    package func register<Context: RequestContext & RemoteAddressRequestContext>(on router: Router<Context>) {
        router.post(RouterPath(Self.routePath)) { request, context in
            // The peer as gRPC names it, so the service counts rate limits by address.
            let peer = context.remoteAddress.flatMap { address in
                address.ipAddress.map { ip in
                    address.protocol == .inet6 ? "ipv6:[\(ip)]:\(address.port ?? 0)" : "ipv4:\(ip):\(address.port ?? 0)"
                }
            }
            return try await self.respond(
                to: request,
                method: context.parameters.get("method") ?? "",
                peer: peer ?? "grpc-web"
            )
        }
    }

    private func respond(to request: Request, method: String, peer: String) async throws -> Response {
        let type = request.headers[.contentType]?.split(separator: ";").first?
            .trimmingCharacters(in: .whitespaces).lowercased()
        let isText: Bool
        switch type {
        case "application/grpc-web", "application/grpc-web+proto": isText = false
        case "application/grpc-web-text", "application/grpc-web-text+proto": isText = true
        default:
            throw HeraldError(
                .unsupportedMediaType,
                "a gRPC-Web call is application/grpc-web+proto or application/grpc-web-text"
            )
        }
        guard let handler = state.withLock({ $0.handler }) else {
            throw HeraldError(.unavailable, "the server is shutting down")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: Self.maxBodyBytes(forMessageBytes: maxMessageBytes))
        } catch is NIOTooManyBytesError {
            throw HeraldError(.tooLarge, "the request is larger than \(maxMessageBytes) bytes")
        }
        var body = Array(buffer.readableBytesView)
        if isText {
            guard let decoded = Self.decodeBase64(body) else {
                throw HeraldError.malformed("a grpc-web-text body must be base64")
            }
            body = decoded
        }
        guard let messages = Self.messages(in: body) else {
            throw HeraldError.malformed("the body is not a sequence of uncompressed gRPC-Web frames")
        }
        var metadata = Metadata()
        for field in request.headers where !Self.httpOnlyFields.contains(field.name.canonicalName) {
            metadata.addString(field.value, forKey: field.name.canonicalName)
        }
        let parts = [RPCRequestPart<Bytes>.metadata(metadata)] + messages.map { .message($0) }
        let descriptor = MethodDescriptor(fullyQualifiedService: "herald.v1.Herald", method: method)
        var headers = HTTPFields()
        headers[.contentType] = isText ? "application/grpc-web-text+proto" : "application/grpc-web+proto"
        headers[.cacheControl] = "no-cache, no-store"
        headers[.xAccelBuffering] = "no"
        return Response(
            status: .ok,
            headers: headers,
            body: ResponseBody { writer in
                let outbox = Outbox<RPCResponsePart<Bytes>>()
                let inbound = RPCAsyncSequence<RPCRequestPart<Bytes>, any Error>(
                    wrapping: AsyncThrowingStream { continuation in
                        for part in parts { continuation.yield(part) }
                        continuation.finish()
                    }
                )
                try await withServerContextRPCCancellationHandle { handle in
                    let context = ServerContext(
                        descriptor: descriptor,
                        remotePeer: peer,
                        localPeer: "grpc-web",
                        cancellation: handle
                    )
                    let stream = RPCStream(
                        descriptor: descriptor,
                        inbound: inbound,
                        outbound: RPCWriter.Closable(wrapping: OutboxWriter(outbox: outbox))
                    )
                    try await withThrowingDiscardingTaskGroup { group in
                        group.addTask {
                            await handler(stream, context)
                            outbox.finish()
                        }
                        var initial = Metadata()
                        do {
                            try await outbox.drain { part in
                                switch part {
                                case .metadata(let metadata):
                                    initial = metadata
                                case .message(let message):
                                    try await writer.write(Self.frame(flags: 0x00, message, text: isText))
                                case .status(let status, let trailers):
                                    let block = Self.trailerBlock(status, initial, trailers)
                                    try await writer.write(Self.frame(flags: 0x80, block, text: isText))
                                }
                            }
                        } catch {
                            handle.cancel()
                            throw error
                        }
                    }
                }
                try await writer.finish(nil)
            }
        )
    }

    // MARK: Framing

    /// Request headers that belong to HTTP, not to the call's metadata.
    private static let httpOnlyFields: Set<String> = [
        "accept", "accept-encoding", "accept-language", "cache-control", "connection", "content-length",
        "content-type", "cookie", "host", "origin", "pragma", "referer", "te", "transfer-encoding",
        "user-agent", "x-grpc-web", "x-user-agent",
    ]

    /// The messages of a request body: frames of a flag byte, a big-endian length and the
    /// message; `nil` when the body is cut short or a frame is compressed (not offered).
    static func messages(in body: [UInt8]) -> [[UInt8]]? {
        var body = ByteBuffer(bytes: body)
        var messages: [[UInt8]] = []
        while body.readableBytes > 0 {
            guard let flags = body.readInteger(as: UInt8.self), flags & 0x01 == 0,
                let length = body.readInteger(as: UInt32.self),
                let message = body.readBytes(length: Int(length))
            else { return nil }
            if flags & 0x80 == 0 { messages.append(message) }
        }
        return messages
    }

    /// One frame, base64 on its own in text mode.
    static func frame(flags: UInt8, _ payload: [UInt8], text: Bool) -> ByteBuffer {
        var frame = ByteBuffer()
        frame.writeInteger(flags)
        frame.writeInteger(UInt32(payload.count))
        frame.writeBytes(payload)
        return text ? ByteBuffer(string: Data(frame.readableBytesView).base64EncodedString()) : frame
    }

    /// The trailer frame's payload: `grpc-status`, `grpc-message` and the metadata as HTTP/1 header lines.
    static func trailerBlock(_ status: Status, _ initial: Metadata, _ trailers: Metadata) -> [UInt8] {
        var lines = "grpc-status: \(status.code.rawValue)\r\n"
        if !status.message.isEmpty {
            // As gRPC percent-encodes it over HTTP/2: printable ASCII but '%' as is.
            let allowed = CharacterSet(
                charactersIn:
                    " !\"#$&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~"
            )
            lines += "grpc-message: \(status.message.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")\r\n"
        }
        for (key, value) in Array(initial) + Array(trailers) {
            switch value {
            case .string(let text): lines += "\(key): \(text)\r\n"
            case .binary(let bytes): lines += "\(key): \(Data(bytes).base64EncodedString())\r\n"
            }
        }
        return Array(lines.utf8)
    }

    /// Base64 of one or more padded pieces one after another (as streaming clients send).
    static func decodeBase64(_ text: [UInt8]) -> [UInt8]? {
        var out: [UInt8] = []
        var start = 0
        while start < text.count {
            var end = start
            while end < text.count {
                end += 4
                if end <= text.count && text[end - 1] == UInt8(ascii: "=") { break }
            }
            guard end <= text.count, let piece = Data(base64Encoded: Data(text[start..<end])) else { return nil }
            out += piece
            start = end
        }
        return out
    }
}

/// The gRPC side of a gRPC-Web call writes into the ``Outbox`` the HTTP body drains.
private struct OutboxWriter: ClosableRPCWriterProtocol {
    typealias Element = RPCResponsePart<[UInt8]>
    let outbox: Outbox<Element>

    func write(_ element: Element) async throws { try await outbox.send(element) }

    func write(contentsOf elements: some Sequence<Element>) async throws {
        for element in elements { try await outbox.send(element) }
    }

    func finish() async { outbox.finish() }

    func finish(throwing error: any Error) async { outbox.fail(error) }
}

/// The gRPC server behind gRPC-Web, as a service of the `ServiceGroup`.
package struct GRPCWebEndpoint: Service {
    private let server: GRPCServer<GRPCWebTransport>

    package init(transport: GRPCWebTransport, service: HeraldService) {
        server = GRPCServer(transport: transport, services: [service])
    }

    package func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.serve()
        } onGracefulShutdown: {
            server.beginGracefulShutdown()
        }
    }
}
