internal import HTTPTypes
internal import HeraldHTTP
internal import NIOCore
internal import NIOHTTPTypes
internal import Synchronization

/// Turns the WebSocket library's empty `400` for a refused upgrade into a problem document
/// with the reason (`403 origin-refused`, `404 not-found`), like every other error answer.
///
/// The upgrade decision records its reason under the connection (``RefusedUpgrades``); this
/// handler, which the library adds to the HTTP/1.1 pipeline once it has decided not to
/// upgrade, takes that reason and replaces the library's `400` with it. It leaves the
/// pipeline after the connection's first answer, so later writes do not pass through it.
final class UpgradeRefusalHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let refused: RefusedUpgrades
    private var problem: Problem?
    private var replacing = false

    init(refused: RefusedUpgrades) {
        self.refused = refused
    }

    func handlerAdded(context: ChannelHandlerContext) {
        problem = refused.take(for: context.channel)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let response) where problem != nil && response.status == .badRequest:
            let problem = problem!
            self.problem = nil
            replacing = true
            let body = ByteBuffer(string: problem.json)
            var headers = problem.headers
            headers[.contentType] = "application/problem+json"
            headers[.contentLength] = "\(body.readableBytes)"
            headers[.connection] = "close"
            context.write(
                wrapOutboundOut(.head(HTTPResponse(status: problem.status, headerFields: headers))),
                promise: nil
            )
            context.write(wrapOutboundOut(.body(body)), promise: promise)
        case .body where replacing:
            promise?.succeed()
        case .end where replacing:
            replacing = false
            context.write(data, promise: promise)
        default:
            context.write(data, promise: promise)
            // Only a connection's first answer can be a refused upgrade: out of the way after it.
            if case .head = unwrapOutboundIn(data) {
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            }
        }
    }
}

/// Why an upgrade was refused, per connection, from the decision until the pipeline that
/// answers it is set up (a few event-loop turns later). Each entry is taken exactly once.
final class RefusedUpgrades: Sendable {
    private let reasons = Mutex<[ObjectIdentifier: Problem]>([:])

    func record(_ problem: Problem, for channel: any Channel) {
        reasons.withLock { $0[ObjectIdentifier(channel)] = problem }
    }

    func take(for channel: any Channel) -> Problem? {
        reasons.withLock { $0.isEmpty ? nil : $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }
}
