internal import Foundation
package import GRPCCore
package import HeraldAccess
internal import HeraldCore
internal import HeraldHTTP
package import HeraldHub
package import HeraldRunner
internal import HeraldStore
package import Logging

/// What the gRPC surface needs to know beyond the store and hub.
package struct GRPCConfiguration: Sendable {
    /// Largest JSON a call may carry: a `Publish`'s `data_json`, a `CreateCheck` as JSON (the
    /// HTTP body limit, `max-body-bytes`).
    package var maxDataBytes: Int
    /// Channels one `Subscribe` call may follow at once (`ws-max-subscriptions`, as for a WebSocket).
    package var maxSubscriptions: Int
    /// How long one write of a stream may wait for its client to read before the call ends
    /// (`write-timeout`, as on the HTTP port).
    package var writeTimeout: Duration

    package init(maxDataBytes: Int, maxSubscriptions: Int, writeTimeout: Duration) {
        self.maxDataBytes = maxDataBytes
        self.maxSubscriptions = maxSubscriptions
        self.writeTimeout = writeTimeout
    }
}

/// `herald.v1.Herald`: the same checks and channels as the REST API and the streams, over the
/// same store, hub and ``CheckService``.
///
/// Every call runs in its own task, cancelled when the client cancels or the deadline passes
/// (gRPC signals that on the call, not on the handler's task), so a cancelled stream leaves
/// the hub at once. Herald's errors become status codes in one table (`RPCError.init(_:)`).
/// Streams end with `UNAVAILABLE` on shutdown and `RESOURCE_EXHAUSTED` when the client falls
/// behind the hub's bound, both with the position to resume from in the message and in the
/// trailers `herald-epoch` and `herald-offset`, and with `UNAVAILABLE` when one write waits for
/// the client to read for longer than `write-timeout` (``WriteWatch``).
package struct HeraldService: Herald_V1_Herald.ServiceProtocol {
    let events: EventLog
    let hub: Hub
    let checks: CheckService
    let follower: ChannelFollower
    let access: Access
    let configuration: GRPCConfiguration
    let logger: Logger

    var store: any CheckStore { events.store }

    package init(
        events: EventLog,
        hub: Hub,
        checks: CheckService,
        follower: ChannelFollower,
        access: Access,
        configuration: GRPCConfiguration,
        logger: Logger
    ) {
        self.events = events
        self.hub = hub
        self.checks = checks
        self.follower = follower
        self.access = access
        self.configuration = configuration
        self.logger = logger
    }

    package func createCheck(
        request: ServerRequest<Herald_V1_CreateCheckRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Herald_V1_Check> {
        try await call(context) {
            let principal = try await principal(request.metadata)
            let body = request.message.body
            let size = body.jsonText.utf8.count
            guard size <= configuration.maxDataBytes else {
                throw HeraldError(
                    .tooLarge,
                    "the check is \(size) bytes of JSON, more than \(configuration.maxDataBytes)"
                )
            }
            let spec = try CheckSpec.validate(body)
            try access.authorizeCreate(spec, by: principal)
            try access.limits.take(.creates, by: principal, address: clientAddress(context, request.metadata))
            let key = request.message.idempotencyKey
            let idempotency =
                key.isEmpty ? nil : try IdempotencyKey(validating: key, field: "idempotency_key", body: body)
            let (owner, cancelToken) = access.owner(for: principal)
            let creation = try await checks.create(spec, idempotency: idempotency, owner: owner)
            var check = Herald_V1_Check(creation.check)
            check.callbackSecret = creation.check.spec.callbackSecret ?? ""
            if creation.isNew { check.cancelToken = cancelToken }
            return ServerResponse(message: check, metadata: creation.isNew ? [:] : ["idempotent-replayed": "true"])
        }
    }

    package func getCheck(
        request: ServerRequest<Herald_V1_GetCheckRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Herald_V1_Check> {
        try await call(context) {
            let id = try checkID(request.message.id)
            try access.authorizeRead(id.channel, by: try await principal(request.metadata))
            guard let check = try await store.check(id) else { throw HeraldError.notFound("no check with id \(id)") }
            return ServerResponse(message: Herald_V1_Check(check))
        }
    }

    package func cancelCheck(
        request: ServerRequest<Herald_V1_CancelCheckRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Herald_V1_Check> {
        try await call(context) {
            let id = try checkID(request.message.id)
            let principal = try await principal(request.metadata)
            guard let check = try await store.check(id) else { throw HeraldError.notFound("no check with id \(id)") }
            let capability = request.message.cancelToken
            try access.authorizeCancel(check, by: principal, capability: capability.isEmpty ? nil : capability)
            return ServerResponse(message: Herald_V1_Check(try await checks.cancel(id)))
        }
    }

    package func watchCheck(
        request: ServerRequest<Herald_V1_WatchCheckRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Herald_V1_Event> {
        let message = request.message
        // No epoch: the check's current state first. An epoch: the changes after `after_offset`.
        let position = message.epoch.isEmpty ? nil : Offset(clamping: message.afterOffset)
        let epoch = message.epoch.isEmpty ? nil : Epoch(message.epoch)
        return StreamingServerResponse { writer in
            try await stream(context) { watch in
                let id = try checkID(message.id)
                try access.authorizeRead(id.channel, by: try await principal(request.metadata))
                guard try await store.check(id) != nil else { throw HeraldError.notFound("no check with id \(id)") }
                try await follow(id.channel, after: position, epoch: epoch) { item in
                    switch item {
                    case .events(let events):
                        for encoded in events {
                            try await watch.write { try await writer.write(Herald_V1_Event(encoded.event)) }
                        }
                    case .reset(let read, _):
                        // The position is gone (another epoch, trimmed): one `herald.reset`, as on SSE.
                        try await watch.write {
                            try await writer.write(Herald_V1_Event(reset: read, channel: id.channel))
                        }
                    case .heartbeat:
                        break  // HTTP/2 keepalive pings watch the connection
                    }
                }
            }
            return [:]
        }
    }

    package func subscribe(
        request: StreamingServerRequest<Herald_V1_SubscribeRequest>,
        context: ServerContext
    ) async throws -> StreamingServerResponse<Herald_V1_SubscribeResponse> {
        StreamingServerResponse { writer in
            try await stream(context) { watch in
                let principal = try await principal(request.metadata)
                let session = SubscribeSession(service: self, principal: principal)
                // Metadata cannot be refreshed within a call: a token's call ends at its exp.
                try await endingAt(principal.expires) {
                    try await session.run(request.messages, writer: writer, watch: watch)
                }
            }
            return [:]
        }
    }

    package func publish(
        request: ServerRequest<Herald_V1_PublishRequest>,
        context: ServerContext
    ) async throws -> ServerResponse<Herald_V1_Event> {
        try await call(context) {
            let principal = try await principal(request.metadata)
            let message = request.message
            guard let channel = ChannelName(message.channel) else {
                throw HeraldError.invalid(ChannelName.rule)
            }
            try access.authorizePublish(channel, by: principal)
            try access.limits.take(.publishes, by: principal, address: clientAddress(context, request.metadata))
            var data = JSONValue.null
            if !message.dataJson.isEmpty {
                guard message.dataJson.utf8.count <= configuration.maxDataBytes else {
                    throw HeraldError(.tooLarge, "data_json is larger than \(configuration.maxDataBytes) bytes")
                }
                do {
                    data = try JSONValue.parse(Data(message.dataJson.utf8))
                } catch {
                    throw HeraldError.invalid("data_json is not valid JSON: \(error)")
                }
            }
            let event = try await events.publish(
                type: message.type,
                data: data,
                to: channel
            )
            return ServerResponse(message: Herald_V1_Event(event))
        }
    }

    // MARK: Shared

    /// Follows `channel` for a stream and turns its end into the stream's status.
    func follow(
        _ channel: ChannelName,
        after position: Offset?,
        epoch: Epoch?,
        onStart: (EventRead) async throws -> Void = { _ in },
        emit: (ChannelFollower.Item) async throws -> Void
    ) async throws {
        var current = epoch
        let (end, last) = try await follower.follow(
            channel,
            after: position,
            epoch: epoch,
            onStart: { read in
                current = read.epoch
                try await onStart(read)
            },
            emit: { item in
                if case .events(let events) = item, let newest = events.last { current = newest.event.epoch }
                try await emit(item)
            }
        )
        var resume = Metadata()
        resume.addString(current?.rawValue ?? "", forKey: "herald-epoch")
        resume.addString(String(last), forKey: "herald-offset")
        let at = "\(channel) after offset \(last) of epoch \(current?.rawValue ?? "")"
        switch end {
        case .checkEnded:
            return
        case .slowConsumer:
            throw RPCError(
                code: .resourceExhausted,
                message: "fell behind the event flow; resume \(at)",
                metadata: resume
            )
        case .expired:
            throw RPCError(
                HeraldError(.tokenExpired, "the token expired; call again with a fresh one and resume \(at)")
            )
        case .ended:
            try Task.checkCancellation()
            throw RPCError(code: .unavailable, message: "the server is shutting down; resume \(at)", metadata: resume)
        }
    }

    /// Runs `body` as a streaming call (see ``call(_:watching:_:)``) whose writes go through the
    /// ``WriteWatch`` it is given.
    func stream(_ context: ServerContext, _ body: @escaping @Sendable (WriteWatch) async throws -> Void) async throws {
        let watch = WriteWatch(limit: configuration.writeTimeout)
        try await call(context, watching: watch) { try await body(watch) }
    }

    /// Runs `body` as the call: in a task cancelled with the call, or by `watch` when a write
    /// stalls, its errors as statuses.
    func call<Value: Sendable>(
        _ context: ServerContext,
        watching watch: WriteWatch? = nil,
        _ body: @escaping @Sendable () async throws -> Value
    ) async throws -> Value {
        let task = Task { try await body() }
        let watchdog = watch.map { watch in Task { await watch.watch { task.cancel() } } }
        defer {
            watchdog?.cancel()
            logger.debug(
                "call ended",
                metadata: ["grpc.method": "\(context.descriptor.method)", "herald.streams": "\(hub.subscriberCount)"]
            )
        }
        do {
            return try await withRPCCancellationHandler {
                try await withTaskCancellationHandler {
                    try await task.value
                } onCancel: {
                    task.cancel()
                }
            } onCancelRPC: {
                task.cancel()
            }
        } catch let error as RPCError {
            throw error
        } catch let error as HeraldError {
            if error.code == .internal {
                logger.error(
                    "call failed",
                    metadata: ["grpc.method": "\(context.descriptor.method)", "error": "\(error)"]
                )
            }
            throw RPCError(error)
        } catch is CancellationError {
            if let watch, watch.stalled {
                throw RPCError(
                    code: .unavailable,
                    message: "the client stopped reading: a write waited longer than \(watch.limit) (write-timeout)"
                )
            }
            throw RPCError(code: .cancelled, message: "the call was cancelled, or its deadline passed")
        } catch {
            if let mapped = HeraldError(error) { throw RPCError(mapped) }
            logger.error("call failed", metadata: ["grpc.method": "\(context.descriptor.method)", "error": "\(error)"])
            throw RPCError(code: .internalError, message: "an internal error occurred")
        }
    }

    private func checkID(_ text: String) throws(HeraldError) -> CheckID {
        guard !text.isEmpty else { throw .invalid("id is required") }
        guard let id = CheckID(text) else { throw .notFound("no check with id \(text)") }
        return id
    }

    /// The client's address: the call's peer (`ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000`), or
    /// behind a trusted proxy the one its `x-forwarded-for` names.
    func clientAddress(_ context: ServerContext, _ metadata: Metadata) -> String? {
        let peer = context.remotePeer
        guard let colon = peer.firstIndex(of: ":"), let last = peer.lastIndex(of: ":"), colon < last else { return nil }
        let host = peer[peer.index(after: colon)..<last]
        return access.limits.addresses.client(
            peer: String(host.hasPrefix("[") && host.hasSuffix("]") ? host.dropFirst().dropLast() : host),
            // Every field, in order: a proxy may add its own rather than append to the client's.
            forwardedFor: Array(metadata[stringValues: "x-forwarded-for"]).joined(separator: ",").nilIfEmpty
        )
    }

    /// Who a call's metadata `authorization: Bearer <key or token>` stands for.
    private func principal(_ metadata: Metadata) async throws(HeraldError) -> Principal {
        let value = metadata[stringValues: "authorization"].first(where: { _ in true })
        return try await access.authenticate(Access.credential(authorization: value))
    }

    /// Runs `body`, ending it with `UNAUTHENTICATED` (`token-expired`) at `expiry`.
    private func endingAt(_ expiry: Timestamp?, _ body: @escaping @Sendable () async throws -> Void) async throws {
        guard let expiry else { return try await body() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(until: expiry.instant)
                throw HeraldError(.tokenExpired, "the token expired; call again with a fresh one from your positions")
            }
            try await group.next()
            group.cancelAll()
        }
    }
}

extension String {
    fileprivate var nilIfEmpty: String? { isEmpty ? nil : self }
}
