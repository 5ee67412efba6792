internal import Crypto
internal import Foundation
package import HeraldCore

/// Who is asking: nobody in particular, the application server (a server API key), or a
/// client holding a token.
package enum Principal: Sendable {
    case anonymous
    case server(key: String)
    case client(ClientGrant)

    /// When the credential stops being valid: a stream ends there.
    package var expires: Timestamp? {
        if case .client(let grant) = self { return grant.expires }
        return nil
    }

    /// The token's `sub`, for rate limits and a check's creator.
    package var subject: String? {
        if case .client(let grant) = self { return grant.subject }
        return nil
    }

    package var isServer: Bool {
        if case .server = self { return true }
        return false
    }
}

/// Who may create checks (`create-checks`).
package enum CheckCreators: String, Sendable, CaseIterable {
    /// Anyone who can reach the server (the default on a loopback address).
    case anyone
    /// A token with `checks: true`, or the server API key (the default with a token key).
    case token
    /// The server API key only (the default on a public address without a token key).
    case key
}

/// The access model, in one place for every transport: who a credential is
/// (``authenticate(_:)``), and what it may read, publish, create and cancel. Transports only
/// find the credential (a header, `?access_token=`, a WebSocket `auth` op, gRPC metadata)
/// and map the ``HeraldError`` thrown to their own answer.
package struct Access: Sendable {
    package var keys: ServerKeys
    /// Nil when no token key is configured: tokens are refused, and channels are public by default.
    package var verifier: TokenVerifier?
    /// `public-channels`: read by anyone.
    package var publicChannels: PatternSet
    /// `create-checks`.
    package var checkCreators: CheckCreators
    /// `check-allowed-targets`: hosts (`host` or `host:port` patterns) `http` and `tcp` checks
    /// of anyone but the server may reach; nil: any host the SSRF guard lets through.
    package var allowedTargets: PatternSet?
    /// Rate limits per client, and who a client is behind a proxy.
    package var limits: ClientLimits

    package init(
        keys: ServerKeys,
        verifier: TokenVerifier? = nil,
        publicChannels: PatternSet? = nil,
        checkCreators: CheckCreators = .anyone,
        allowedTargets: PatternSet? = nil,
        limits: ClientLimits = .init()
    ) {
        self.keys = keys
        self.limits = limits
        self.verifier = verifier
        self.publicChannels = publicChannels ?? (verifier == nil ? .everything : PatternSet())
        self.checkCreators = checkCreators
        self.allowedTargets = allowedTargets
    }

    package var tokensEnabled: Bool { verifier != nil }

    // MARK: Who

    /// The credential of an `Authorization` value (a header, gRPC metadata): what follows
    /// `Bearer `; another scheme is kept whole, so it is refused as a key that does not match.
    package static func credential(authorization value: String?) -> String? {
        guard let value else { return nil }
        guard value.count > 7, value.prefix(7).lowercased() == "bearer " else { return value }
        return String(value.dropFirst(7).drop { $0 == " " })
    }

    /// The principal a bearer credential stands for (nil or empty: anonymous).
    /// - Throws: `.tokenInvalid`/`.tokenExpired` for a token that does not verify (or, with
    ///   tokens on, a bearer that is neither a key nor a JWT), and `.unauthorized` for a
    ///   bearer that is not a key when tokens are off.
    package func authenticate(_ bearer: String?) async throws(HeraldError) -> Principal {
        guard let bearer, !bearer.isEmpty else { return .anonymous }
        if let name = keys.match(bearer) { return .server(key: name) }
        let isTokenShaped = bearer.utf8.count(where: { $0 == UInt8(ascii: ".") }) == 2
        guard let verifier else {
            guard isTokenShaped else { throw .unauthorized("the API key is not valid") }
            throw .tokenInvalid("client tokens are not enabled on this server (no token-secret or token-jwks-file)")
        }
        guard isTokenShaped else { throw .tokenInvalid("the bearer is neither a server API key nor a token (JWT)") }
        return .client(try await verifier.verify(bearer))
    }

    // MARK: What

    /// Reading `channel`: the server, anyone for a public channel or a check's channel (its
    /// id is the capability), else a token whose `channels` grant it.
    /// - Throws: `.tokenRequired` for anonymous, `.channelForbidden` for a token without the grant.
    package func authorizeRead(_ channel: ChannelName, by principal: Principal) throws(HeraldError) {
        if isOpen(channel) { return }
        switch principal {
        case .server: return
        case .client(let grant):
            try grant.requireCurrent()
            guard grant.channels.matches(channel.rawValue) else {
                throw HeraldError(.channelForbidden, "the token does not grant reading \(channel)")
            }
        case .anonymous:
            throw HeraldError(.tokenRequired, "channel \(channel) is private: a token granting it is required")
        }
    }

    /// Whether anyone may read `channel`: a check's channel (its id is the capability), or one
    /// `public-channels` lists.
    package func isOpen(_ channel: ChannelName) -> Bool {
        channel.isCheckChannel || publicChannels.matches(channel.rawValue)
    }

    /// Publishing to `channel`: the server, or a token whose `publish` grants it.
    package func authorizePublish(_ channel: ChannelName, by principal: Principal) throws(HeraldError) {
        switch principal {
        case .server: return
        case .client(let grant):
            try grant.requireCurrent()
            guard grant.publish.matches(channel.rawValue) else {
                throw HeraldError(.channelForbidden, "the token does not grant publishing to \(channel)")
            }
        case .anonymous:
            guard tokensEnabled else {
                throw .unauthorized("publishing needs the server API key: Authorization: Bearer <key>")
            }
            throw HeraldError(.tokenRequired, "publishing needs a token granting \(channel), or the server API key")
        }
    }

    /// Routes only the server API key may use (listing checks, completing one, webhooks).
    package func requireServer(_ principal: Principal) throws(HeraldError) {
        switch principal {
        case .server: return
        case .client: throw HeraldError(.forbidden, "this route needs the server API key, not a client token")
        case .anonymous: throw .unauthorized("this route needs the server API key: Authorization: Bearer <key>")
        }
    }

    /// Creating the check `spec` describes (`create-checks`, and `check-allowed-targets` for
    /// `http`/`tcp` checks of anyone but the server).
    package func authorizeCreate(_ spec: CheckSpec, by principal: Principal) throws(HeraldError) {
        switch (checkCreators, principal) {
        case (_, .server), (.anyone, _): break
        case (.token, .client(let grant)) where grant.checks: try grant.requireCurrent()
        case (.token, .client), (.key, .client):
            throw HeraldError(
                .forbidden,
                "creating checks needs \(checkCreators == .key ? "the server API key" : "a token with checks: true")"
            )
        case (.token, .anonymous):
            throw HeraldError(.tokenRequired, "creating checks needs a token with checks: true (create-checks: token)")
        case (.key, .anonymous):
            throw .unauthorized("creating checks needs the server API key (create-checks: key)")
        }
        guard let allowedTargets, !principal.isServer else { return }
        var targets: [(host: String, port: Int)] = []
        switch spec.parameters {
        case .http(let url, _, _, _): targets += Self.target(of: url).map { [$0] } ?? []
        case .tcp(let host, let port, _): targets.append((host.lowercased(), port))
        case .delay, .external: break
        }
        // The callback is a request Herald makes too.
        if let callback = spec.callbackURL { targets += Self.target(of: callback).map { [$0] } ?? [] }
        for (host, port) in targets where !allowedTargets.matches("\(host):\(port)") && !allowedTargets.matches(host) {
            throw HeraldError(.forbidden, "\(host):\(port) is not in check-allowed-targets")
        }
    }

    /// The host (lowercased) and port a URL reaches; nil when it has no host (the SSRF guard
    /// refuses it anyway).
    private static func target(of url: String) -> (host: String, port: Int)? {
        guard let parsed = URLComponents(string: url), let host = parsed.host else { return nil }
        return (host.lowercased(), parsed.port ?? (parsed.scheme?.lowercased() == "https" ? 443 : 80))
    }

    /// What a new check remembers of its creator, and the cancel capability (returned once,
    /// in the create answer; only its digest is kept).
    package func owner(for principal: Principal) -> (owner: CheckOwner, cancelToken: String) {
        let token = "hct_" + randomToken(bytes: 24)
        return (CheckOwner(subject: principal.subject, cancelDigest: Self.digest(token)), token)
    }

    /// Cancelling `check`: the server, the check's cancel capability, or a token whose `sub`
    /// created it.
    package func authorizeCancel(_ check: Check, by principal: Principal, capability: String?) throws(HeraldError) {
        if principal.isServer { return }
        if let capability, let digest = check.owner?.cancelDigest,
            constantTimeEquals(Array(Self.digest(capability).utf8), Array(digest.utf8))
        {
            return
        }
        if let subject = principal.subject, subject == check.owner?.subject { return }
        if case .anonymous = principal, capability == nil {
            throw .unauthorized(
                "cancelling a check needs its cancel token (Herald-Cancel-Token), its creating token, or the server API key"
            )
        }
        throw HeraldError(.forbidden, "this credential cannot cancel check \(check.id)")
    }

    private static func digest(_ token: String) -> String {
        SHA256.hash(data: Data(token.utf8)).map { String($0, radix: 16).leftPadded }.joined()
    }
}

extension String {
    fileprivate var leftPadded: String { count == 1 ? "0" + self : self }
}
