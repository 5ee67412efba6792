internal import Foundation
package import HeraldCore
internal import JWTKit

/// What a verified client token grants: its claims, read once.
package struct ClientGrant: Sendable, Hashable {
    /// `sub`: who the client is (rate limits count per subject; a check remembers its creator).
    package var subject: String?
    /// `channels`: patterns the client may read.
    package var channels: PatternSet
    /// `publish`: patterns the client may publish to.
    package var publish: PatternSet
    /// `checks: true`: the client may create checks.
    package var checks: Bool
    /// `admin: true`: read, for the dashboard to come (issue 19); it grants nothing today.
    package var admin: Bool
    /// When what the token opened ends: its `exp` plus the leeway.
    package var expires: Timestamp
    /// The token's own `exp`, as a client is told it.
    package var exp: Timestamp

    package init(
        subject: String? = nil,
        channels: PatternSet = .init(),
        publish: PatternSet = .init(),
        checks: Bool = false,
        admin: Bool = false,
        expires: Timestamp,
        exp: Timestamp? = nil
    ) {
        self.exp = exp ?? expires
        self.subject = subject
        self.channels = channels
        self.publish = publish
        self.checks = checks
        self.admin = admin
        self.expires = expires
    }
}

extension ClientGrant {
    /// Refuses a grant past its expiry (and leeway): a check beside every timer, so no race
    /// with one, and no clock step, lets a token act after it.
    package func requireCurrent(now: Timestamp = .now()) throws(HeraldError) {
        guard now.millisecondsSince1970 < expires.millisecondsSince1970 else {
            throw HeraldError(.tokenExpired, "the token expired at \(exp.rfc3339)")
        }
    }
}

/// Where client tokens' keys come from.
package struct TokenKeys: Sendable {
    /// `token-secret`: the HMAC secret of HS256 tokens (at least 32 bytes), and of HS384 and
    /// HS512 tokens when it is at least 48 and 64 bytes long.
    package var secret: String?
    /// `token-jwks-file`'s content: public keys (RS256, ES256, EdDSA), each with a `kid`.
    package var jwks: String?
    /// `token-jwks-url`: fetches the same from a URL; nil when none is configured.
    package var remote: RemoteJWKS?
    /// `token-audience`, `token-issuer`: required values of `aud` and `iss`.
    package var audience: String?
    package var issuer: String?
    /// Clock skew allowed on `exp` and `nbf` (`token-leeway`, default 30 s).
    package var leeway: Duration = .seconds(30)

    package init(secret: String? = nil, jwks: String? = nil, remote: RemoteJWKS? = nil) {
        self.secret = secret
        self.jwks = jwks
        self.remote = remote
    }

    package var isEmpty: Bool { secret == nil && jwks == nil && remote == nil }
}

/// Verifies client tokens (JWTs) with jwt-kit: the signature against the configured keys
/// (chosen by the token's `alg` and `kid`), then `exp` (required), `nbf`, `aud` and `iss`.
package struct TokenVerifier: Sendable {
    private let hmac: [String: JWTKeyCollection]
    private let jwks: KeySet?
    private let remote: RemoteJWKS?
    private let audience: String?
    private let issuer: String?
    private let leeway: Duration

    /// - Throws: ``HeraldError`` `.invalid` when the secret is shorter than 32 bytes or the
    ///   JWKS is not a valid key set.
    package init(_ keys: TokenKeys) async throws(HeraldError) {
        var hmac: [String: JWTKeyCollection] = [:]
        if let secret = keys.secret {
            guard secret.utf8.count >= 32 else { throw .invalid("token-secret must be at least 32 bytes") }
            // RFC 7518 3.2: a key at least as long as the hash (jwt-kit asserts it), so HS384
            // needs a 48-byte secret and HS512 a 64-byte one.
            let digests: [(String, DigestAlgorithm, Int)] = [
                ("HS256", .sha256, 32), ("HS384", .sha384, 48), ("HS512", .sha512, 64),
            ]
            for (name, digest, length) in digests where secret.utf8.count >= length {
                hmac[name] = await JWTKeyCollection().add(hmac: HMACKey(from: secret), digestAlgorithm: digest)
            }
        }
        if let text = keys.jwks {
            do {
                jwks = try await KeySet(json: text)
            } catch {
                throw .invalid("token-jwks-file is not a valid JWKS (every key needs a kid): \(error)")
            }
        } else {
            jwks = nil
        }
        self.hmac = hmac
        self.remote = keys.remote
        self.audience = keys.audience
        self.issuer = keys.issuer
        self.leeway = keys.leeway
    }

    /// The grant `token` carries.
    /// - Throws: ``HeraldError`` `.tokenExpired` past `exp` (and the leeway), `.tokenInvalid`
    ///   for anything else wrong: malformed, an unknown key or algorithm, a bad signature, no
    ///   `exp`, a wrong `aud` or `iss`, a claim of the wrong type, not yet valid (`nbf`).
    package func verify(_ token: String, now: Timestamp = .now()) async throws(HeraldError) -> ClientGrant {
        let claims: ClientClaims
        do {
            claims = try await verifySignature(token)
        } catch let error as HeraldError {
            throw error
        } catch let error as JWTError {
            throw .tokenInvalid(Self.reason(error))
        } catch {
            throw .tokenInvalid("the token is malformed")
        }
        guard let exp = claims.exp else { throw .tokenInvalid("the token has no exp claim; exp is required") }
        // Seconds, as RFC 7519 says; an issuer sending milliseconds or nanoseconds would overflow.
        let ceiling = 100_000_000_000.0  // the year 5138
        guard exp.value.timeIntervalSince1970.magnitude < ceiling,
            (claims.nbf?.value.timeIntervalSince1970.magnitude ?? 0) < ceiling
        else { throw .tokenInvalid("exp or nbf is not a time in seconds since 1970") }
        let skew = leeway.milliseconds
        let expires = Timestamp(millisecondsSince1970: Int64(exp.value.timeIntervalSince1970 * 1000))
        guard now.millisecondsSince1970 < expires.millisecondsSince1970 + skew else {
            throw HeraldError(.tokenExpired, "the token expired at \(expires.rfc3339)")
        }
        if let nbf = claims.nbf, now.millisecondsSince1970 + skew < Int64(nbf.value.timeIntervalSince1970 * 1000) {
            throw .tokenInvalid("the token is not valid yet (nbf)")
        }
        if let audience, !(claims.aud?.value.contains(audience) ?? false) {
            throw .tokenInvalid("the token's aud does not include \(audience)")
        }
        if let issuer, claims.iss?.value != issuer { throw .tokenInvalid("the token's iss is not \(issuer)") }
        func patterns(_ list: [String]?, _ claim: String) throws(HeraldError) -> PatternSet {
            var set = PatternSet()
            for text in list ?? [] {
                guard let pattern = ChannelPattern(text) else {
                    throw .tokenInvalid("\(claim) holds '\(text.prefix(40))', which is not a channel pattern")
                }
                set.patterns.append(pattern)
            }
            return set
        }
        return ClientGrant(
            subject: claims.sub?.value,
            channels: try patterns(claims.channels, "channels"),
            publish: try patterns(claims.publish, "publish"),
            checks: claims.checks ?? false,
            admin: claims.admin ?? false,
            expires: Timestamp(millisecondsSince1970: expires.millisecondsSince1970 + skew),
            exp: expires
        )
    }

    /// The claims, once the signature is verified by the key the header names.
    private func verifySignature(_ token: String) async throws -> ClientClaims {
        let header = try DefaultJWTParser().parse(Array(token.utf8), as: ClientClaims.self).header
        let algorithm = header.alg ?? ""
        if algorithm.hasPrefix("HS") {
            guard let keys = hmac[algorithm] else {
                throw HeraldError.tokenInvalid(
                    "\(algorithm) tokens are not accepted here (no token-secret, one too short for it, or an unknown algorithm)"
                )
            }
            return try await keys.verify(token, as: ClientClaims.self)
        }
        if let jwks, jwks.knows(header.kid) { return try await jwks.keys.verify(token, as: ClientClaims.self) }
        if let remote { return try await remote.verify(token, kid: header.kid) }
        guard jwks != nil else {
            throw HeraldError.tokenInvalid(
                "\(algorithm) tokens are not accepted here (no token-jwks-file or token-jwks-url)"
            )
        }
        throw HeraldError.tokenInvalid("no key of token-jwks-file has the token's kid")
    }

    private static func reason(_ error: JWTError) -> String {
        switch error.errorType {
        case .signatureVerificationFailed: "the token's signature does not verify"
        case .unknownKID, .missingKIDHeader, .noKeyProvided: "no key known for the token's kid"
        case .malformedToken: "the token is malformed"
        case .unsupportedAlgorithm, .signingAlgorithmFailure: "the token's algorithm is not supported"
        case .claimVerificationFailure: "a claim of the token is not valid"
        default: "the token is not valid"
        }
    }
}

/// The claims Herald reads; others are ignored. Checks run in ``TokenVerifier`` so that an
/// expired token is told apart from an invalid one.
struct ClientClaims: JWTPayload {
    var exp: ExpirationClaim?
    var nbf: NotBeforeClaim?
    var sub: SubjectClaim?
    var aud: AudienceClaim?
    var iss: IssuerClaim?
    var channels: [String]?
    var publish: [String]?
    var checks: Bool?
    var admin: Bool?

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Public keys from a JWKS document, and the `kid`s it holds (jwt-kit falls back to its
/// default key for an unknown `kid`, which would hide that the key is missing). A token
/// without a `kid` is taken only when the set holds a single key.
struct KeySet: Sendable {
    let keys: JWTKeyCollection
    let kids: Set<String>

    init(json: String) async throws {
        var document = try JSONDecoder().decode(JWKS.self, from: Data(json.utf8))
        for index in document.keys.indices where document.keys[index].algorithm == nil {
            document.keys[index].algorithm = try Self.algorithm(of: document.keys[index])
        }
        kids = Set(document.keys.compactMap { $0.keyIdentifier?.string })
        keys = try await JWTKeyCollection().add(jwks: document)
    }

    /// The one algorithm a key without `alg` verifies. Left open, jwt-kit would build the key's
    /// verifier from the first token's header and keep it, so one forged header (PS256 on an
    /// RS256 key) would lock every real token out.
    static func algorithm(of key: JWK) throws -> JWK.Algorithm {
        let members = try JSONDecoder().decode([String: String?].self, from: try JSONEncoder().encode(key))
        switch (members["kty"] ?? nil, members["crv"] ?? nil) {
        case ("RSA", _): return .rs256
        case ("EC", "P-256"): return .es256
        case ("EC", "P-384"): return .es384
        case ("EC", "P-521"): return .es512
        case ("OKP", "Ed25519"): return .eddsa
        default: throw HeraldError.invalid("a JWKS key without alg is of a type Herald cannot tell the algorithm of")
        }
    }

    func knows(_ kid: String?) -> Bool { kid.map(kids.contains) ?? (kids.count == 1) }
}
