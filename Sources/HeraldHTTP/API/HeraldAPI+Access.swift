internal import HTTPTypes
package import HeraldAccess
package import HeraldCore
package import Hummingbird

extension HTTPField.Name {
    /// A check's cancel capability, returned once as `cancel_token` when it was created.
    static let heraldCancelToken = HTTPField.Name("Herald-Cancel-Token")!
}

extension Request {
    /// The credential a request carries: `Authorization: Bearer <key or token>`, or
    /// `?access_token=<token>` on a GET, for clients that cannot set headers (EventSource,
    /// JSONP, iframes).
    /// Neither is ever logged.
    package var bearer: String? {
        if let credential = Access.credential(authorization: headers[.authorization]) { return credential }
        // Only reads take it from the query: a link or a form must not publish or create.
        guard method == .get || method == .head else { return nil }
        return uri.queryParameters.get("access_token")
    }
}

extension HTTPField.Name {
    static let xForwardedFor = HTTPField.Name("X-Forwarded-For")!
}

extension HeraldAPI {
    /// The client's address: the peer's, or behind a trusted proxy the one it forwards for.
    func clientAddress(_ request: Request, _ context: some RemoteAddressRequestContext) -> String? {
        access.limits.addresses.client(
            peer: context.remoteAddress?.ipAddress,
            forwardedFor: request.headers[.xForwardedFor]
        )
    }

    /// Who sent `request` (see ``Access/authenticate(_:)``).
    func principal(_ request: Request) async throws(HeraldError) -> Principal {
        try await access.authenticate(request.bearer)
    }

    /// Refuses anyone but the server API key (and an `admin` token).
    func requireServer(_ request: Request) async throws(HeraldError) {
        try access.requireServer(await principal(request))
    }

    /// The principal reading `channel`, once it is allowed to, and when its reading must end:
    /// the token's expiry when the channel needed its grant, else never.
    func reader(
        _ request: Request,
        of channel: ChannelName
    ) async throws(HeraldError) -> (Principal, ContinuousClock.Instant?) {
        let principal = try await principal(request)
        try access.authorizeRead(channel, by: principal)
        return (principal, access.readExpiry(channel, by: principal)?.instant)
    }
}

extension Access {
    /// When `principal`'s reading of `channel` ends: its token's expiry, unless the channel is
    /// readable without it (public, a check's) or the principal is the server.
    package func readExpiry(_ channel: ChannelName, by principal: Principal) -> Timestamp? {
        isOpen(channel) ? nil : principal.expires
    }
}

extension Timestamp {
    /// The same moment on the monotonic clock (for deadlines).
    package var instant: ContinuousClock.Instant {
        ContinuousClock.now.advanced(by: .milliseconds(millisecondsSince1970 - Timestamp.now().millisecondsSince1970))
    }
}
