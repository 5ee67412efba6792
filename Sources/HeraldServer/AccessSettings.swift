internal import Foundation
package import HeraldAccess
internal import HeraldCore
internal import Logging

/// The access-control settings as configured (docs/security.md), before the keys are read.
package struct AccessSettings: Sendable {
    /// `token-secret`, `token-jwks-file`, `token-jwks-url`, `token-audience`, `token-issuer`,
    /// `token-leeway`.
    package var tokenSecret: String?
    package var jwksFile: String?
    package var jwksURL: String?
    package var audience: String?
    package var issuer: String?
    package var leeway: Duration = .seconds(30)
    /// `public-channels`; nil: `*` without a token key, none with one.
    package var publicChannels: PatternSet?
    /// `create-checks`; nil: `anyone` on a loopback address, else `token` with a token key and
    /// `key` without one.
    package var checkCreators: CheckCreators?
    /// `check-allowed-targets`; nil: any host the SSRF guard lets through.
    package var allowedTargets: PatternSet?

    /// `rate-limit-creates`, `rate-limit-publishes`, `rate-limit-ws-ops`, `rate-limit-connects`:
    /// per client per second (0: off); unset: see ``rates(listeningOn:)``.
    package var rates: [ClientLimits.Kind: Double] = [:]
    /// `max-connections-per-ip` (0: off); unset: see ``maxConnectionsPerAddress(listeningOn:)``.
    package var maxConnectionsPerAddress: Int?
    /// `trusted-proxies`.
    package var trustedProxies: [Network] = []

    package init() {}

    /// Whether `host` is a loopback address: only this machine's clients reach it.
    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" { return true }
        let address = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        return Self.loopback.contains { $0.contains(address) }
    }

    private static let loopback = [Network("127.0.0.0/8")!, Network("::1/128")!]

    /// The rate limits in force: as set; unset ones are off on a loopback address and, on a
    /// public one, 10 creates, 100 publishes, 200 WebSocket ops and 50 connections a second.
    package func rates(listeningOn host: String) -> [ClientLimits.Kind: Double] {
        let defaults: [ClientLimits.Kind: Double] =
            Self.isLoopback(host) ? [:] : [.creates: 10, .publishes: 100, .webSocketOps: 200, .connects: 50]
        return defaults.merging(rates) { _, set in set }.filter { $0.value > 0 }
    }

    /// Connections one address may hold: as set; unset, none on loopback and 256 on a public address.
    package func maxConnectionsPerAddress(listeningOn host: String) -> Int? {
        let value = maxConnectionsPerAddress ?? (Self.isLoopback(host) ? 0 : 256)
        return value > 0 ? value : nil
    }

    package var tokensConfigured: Bool { tokenSecret != nil || jwksFile != nil || jwksURL != nil }

    /// Who may create checks when `create-checks` is not set: frictionless on loopback, safe
    /// on a public address.
    package func checkCreators(listeningOn host: String) -> CheckCreators {
        if let checkCreators { return checkCreators }
        if Self.isLoopback(host) { return .anyone }
        return tokensConfigured ? .token : .key
    }

    /// The access model, with its keys read.
    /// - Throws: ``ConfigurationError`` for an unreadable or invalid key file, a short secret,
    ///   or `create-checks: token` without a token key.
    func access(
        keys: ServerKeys,
        host: String,
        logger: Logger,
        fetch: @escaping RemoteJWKS.Fetch
    ) async throws(ConfigurationError) -> Access {
        var tokenKeys = TokenKeys(secret: tokenSecret)
        if let jwksFile {
            guard let text = try? String(contentsOfFile: jwksFile, encoding: .utf8) else {
                throw ConfigurationError(message: "cannot read token-jwks-file \(jwksFile)")
            }
            tokenKeys.jwks = text
        }
        if let jwksURL { tokenKeys.remote = RemoteJWKS(url: jwksURL, logger: logger, fetch: fetch) }
        tokenKeys.audience = audience
        tokenKeys.issuer = issuer
        tokenKeys.leeway = leeway
        let creators = checkCreators(listeningOn: host)
        if creators == .token && tokenKeys.isEmpty {
            throw ConfigurationError(
                message: "create-checks: token needs token-secret, token-jwks-file or token-jwks-url"
            )
        }
        do {
            return Access(
                keys: keys,
                verifier: tokenKeys.isEmpty ? nil : try await TokenVerifier(tokenKeys),
                publicChannels: publicChannels,
                checkCreators: creators,
                allowedTargets: allowedTargets,
                limits: ClientLimits(
                    rates: rates(listeningOn: host),
                    addresses: ClientAddresses(trustedProxies: trustedProxies)
                )
            )
        } catch {
            throw ConfigurationError(message: error.message)
        }
    }
}
