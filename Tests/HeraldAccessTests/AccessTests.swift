import Foundation
import HeraldCore
import JWTKit
import Logging
import Testing

@testable import HeraldAccess

/// 64 bytes: long enough for HS512.
private let secret = String(repeating: "an-hmac-secret-16", count: 4).prefix(64).description

/// The claims a test signs; `exp` is optional so a token without one can be made.
private struct TestClaims: JWTPayload {
    var exp: ExpirationClaim?
    var sub: SubjectClaim?
    var aud: AudienceClaim?
    var iss: IssuerClaim?
    var channels: [String]?
    var publish: [String]?
    var checks: Bool?
    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

private func hmacToken(
    _ claims: TestClaims,
    digest: DigestAlgorithm = .sha256,
    key: String = secret
) async throws -> String {
    try await JWTKeyCollection().add(hmac: HMACKey(from: key), digestAlgorithm: digest).sign(claims)
}

private func claims(in seconds: TimeInterval = 60, channels: [String]? = ["orders", "user:42:*"]) -> TestClaims {
    TestClaims(
        exp: ExpirationClaim(value: Date().addingTimeInterval(seconds)),
        sub: "alice",
        channels: channels,
        publish: ["chat:*"],
        checks: true
    )
}

@Suite struct PatternTests {
    @Test func starMatchesAnyRunAndNothingElseIsSpecial() {
        #expect(ChannelPattern("orders")!.matches("orders"))
        #expect(!ChannelPattern("orders")!.matches("orders2"))
        #expect(ChannelPattern("user:42:*")!.matches("user:42:"))
        #expect(ChannelPattern("user:42:*")!.matches("user:42:inbox"))
        #expect(!ChannelPattern("user:42:*")!.matches("user:420"))
        #expect(ChannelPattern("*")!.matches("anything"))
        #expect(ChannelPattern("a*b*c")!.matches("abc"))
        #expect(ChannelPattern("a*b*c")!.matches("a-b-b-c"))
        #expect(!ChannelPattern("a*b*c")!.matches("a-c-b"))
        #expect(!ChannelPattern("ab*ba")!.matches("aba"))
        #expect(ChannelPattern("*.example.com")!.matches("api.example.com"))
        #expect(!ChannelPattern("*.example.com")!.matches("example.com"))
        #expect(ChannelPattern("") == nil)
    }

    @Test func aListParsesCommaSeparatedPatterns() {
        let set = PatternSet(list: " orders , news:* ,")!
        #expect(set.patterns.map(\.description) == ["orders", "news:*"])
        #expect(set.matches("news:today") && !set.matches("user:1"))
        #expect(PatternSet(list: "")!.isEmpty)
    }
}

@Suite struct ServerKeysTests {
    @Test func keysAreComparedInConstantTime() {
        #expect(constantTimeEquals(Array("secret-key".utf8), Array("secret-key".utf8)))
        #expect(!constantTimeEquals(Array("secret-key".utf8), Array("secret-kez".utf8)))
        #expect(!constantTimeEquals(Array("short".utf8), Array("longer-key".utf8)))
    }

    @Test func namedAndUnnamedKeysMatchByValue() {
        let keys = ServerKeys(list: "old=0123456789abcdef0123,new=fedcba9876543210fedc,plainkey-plainkey-x")!
        #expect(keys.match("0123456789abcdef0123") == "old")
        #expect(keys.match("fedcba9876543210fedc") == "new")
        #expect(keys.match("plainkey-plainkey-x") == "key3")
        #expect(keys.match("0123456789abcdef0124") == nil)
        #expect(keys.match("") == nil)
        #expect(ServerKeys(list: "short") == nil)
        #expect(ServerKeys(list: "") == nil)
        // Base64 padding is not mistaken for a name.
        #expect(ServerKeys(list: "abcdefghijklmnopqrstuvw=")?.match("abcdefghijklmnopqrstuvw=") == "key1")
        #expect(ServerKeys(list: "abcdefgh==")?.match("abcdefgh==") == "key1")
    }
}

/// The error `verify` throws for `token`, or nil when it verifies.
private func refusal(_ verifier: TokenVerifier, _ token: String) async -> HeraldError? {
    do {
        _ = try await verifier.verify(token)
        return nil
    } catch {
        return error
    }
}

@Suite struct TokenVerifierTests {
    func verifier(audience: String? = nil, issuer: String? = nil, jwks: String? = nil) async throws -> TokenVerifier {
        var keys = TokenKeys(secret: secret, jwks: jwks)
        keys.audience = audience
        keys.issuer = issuer
        keys.leeway = .seconds(5)
        return try await TokenVerifier(keys)
    }

    @Test(arguments: [DigestAlgorithm.sha256, .sha384, .sha512])
    func hmacTokensOfEveryDigestVerify(digest: DigestAlgorithm) async throws {
        let grant = try await verifier().verify(try await hmacToken(claims(), digest: digest))
        #expect(grant.subject == "alice")
        #expect(grant.channels.matches("user:42:x") && !grant.channels.matches("user:43:x"))
        #expect(grant.publish.matches("chat:room") && grant.checks)
    }

    @Test func aWrongSignatureIsInvalid() async throws {
        let token = try await hmacToken(claims(), key: secret + "x")
        #expect(await refusal(try await verifier(), token)?.code == .tokenInvalid)
    }

    @Test func anExpiredTokenIsToldApartFromAnInvalidOne() async throws {
        let verifier = try await verifier()
        #expect(await refusal(verifier, try await hmacToken(claims(in: -60)))?.code == .tokenExpired)
        // Within the leeway it still counts.
        _ = try await verifier.verify(try await hmacToken(claims(in: -2)))
    }

    @Test func expIsRequired() async throws {
        var noExp = claims()
        noExp.exp = nil
        let error = await refusal(try await verifier(), try await hmacToken(noExp))
        #expect(error?.code == .tokenInvalid && error?.message.contains("exp") == true)
    }

    @Test func audienceAndIssuerAreCheckedWhenConfigured() async throws {
        var good = claims()
        good.aud = "herald"
        good.iss = "https://issuer.test"
        let checking = try await verifier(audience: "herald", issuer: "https://issuer.test")
        _ = try await checking.verify(try await hmacToken(good))
        var otherAudience = good
        otherAudience.aud = "other"
        var noIssuer = good
        noIssuer.iss = nil
        for bad in [otherAudience, noIssuer] {
            #expect(await refusal(checking, try await hmacToken(bad))?.code == .tokenInvalid)
        }
    }

    @Test func garbageIsInvalidNeverACrash() async throws {
        let verifier = try await verifier()
        for text in [
            "a.b.c", "..", "eyJhbGciOiJub25lIn0.eyJleHAiOjk5OTk5OTk5OTl9.", "x.y", String(repeating: "a.", count: 2),
        ] {
            #expect(await refusal(verifier, text)?.code == .tokenInvalid)
        }
    }

    @Test func es256TokensVerifyAgainstAJWKSFile() async throws {
        let key = ES256PrivateKey()
        let (x, y) = key.publicKey.parameters!
        let jwks =
            #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","use":"sig","kid":"k1","x":"\#(x)","y":"\#(y)"}]}"#
        let signer = await JWTKeyCollection().add(ecdsa: key, kid: "k1")
        let token = try await signer.sign(claims(), kid: "k1")
        let grant = try await verifier(jwks: jwks).verify(token)
        #expect(grant.subject == "alice")
        // Another key with the same kid does not verify.
        let forged = try await JWTKeyCollection().add(ecdsa: ES256PrivateKey(), kid: "k1").sign(claims(), kid: "k1")
        #expect(await refusal(try await verifier(jwks: jwks), forged)?.code == .tokenInvalid)
    }

    @Test func aSecretShorterThanTheHashServesOnlyTheShorterAlgorithms() async throws {
        let short = String(secret.prefix(32))
        let verifier = try await TokenVerifier(TokenKeys(secret: short))
        _ = try await verifier.verify(try await hmacToken(claims(), key: short))
        #expect(
            await refusal(verifier, try await hmacToken(claims(), digest: .sha256, key: secret))?.code == .tokenInvalid
        )
    }

    @Test func concurrentFirstTokensShareOneFetch() async throws {
        let key = ES256PrivateKey()
        let (x, y) = key.publicKey.parameters!
        let jwks = #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k3","x":"\#(x)","y":"\#(y)"}]}"#
        let fetches = Counter()
        let remote = RemoteJWKS(url: "https://issuer.test/jwks", logger: .init(label: "t")) { _ in
            await fetches.add()
            try await Task.sleep(for: .milliseconds(50))
            return jwks
        }
        let verifier = try await TokenVerifier(TokenKeys(remote: remote))
        let token = try await JWTKeyCollection().add(ecdsa: key, kid: "k3").sign(claims(), kid: "k3")
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<10 { group.addTask { _ = try await verifier.verify(token) } }
            try await group.waitForAll()
        }
        #expect(await fetches.value == 1)
    }

    @Test func anExpInMillisecondsOrNanosecondsIsInvalidNotACrash() async throws {
        for exp in [Date().timeIntervalSince1970 * 1000, Date().timeIntervalSince1970 * 1e9] {
            var odd = claims()
            odd.exp = ExpirationClaim(value: Date(timeIntervalSince1970: exp))
            #expect(await refusal(try await verifier(), try await hmacToken(odd))?.code == .tokenInvalid)
        }
    }

    @Test func aShortSecretIsRefused() async {
        await #expect(throws: HeraldError.self) { try await TokenVerifier(TokenKeys(secret: "short")) }
    }

    @Test func remoteKeysAreRefetchedOnAnUnknownKidAtMostOncePerInterval() async throws {
        let key = ES256PrivateKey()
        let (x, y) = key.publicKey.parameters!
        let jwks = #"{"keys":[{"kty":"EC","crv":"P-256","alg":"ES256","kid":"k2","x":"\#(x)","y":"\#(y)"}]}"#
        let fetches = Counter()
        let remote = RemoteJWKS(url: "https://issuer.test/jwks", minInterval: .seconds(60), logger: .init(label: "t")) {
            _ in
            await fetches.add()
            return jwks
        }
        let verifier = try await TokenVerifier(TokenKeys(remote: remote))
        let signer = await JWTKeyCollection().add(ecdsa: key, kid: "k2")
        _ = try await verifier.verify(try await signer.sign(claims(), kid: "k2"))
        _ = try await verifier.verify(try await signer.sign(claims(), kid: "k2"))
        for _ in 0..<5 {
            let unknown = try await JWTKeyCollection().add(ecdsa: key, kid: "nope").sign(claims(), kid: "nope")
            await #expect(throws: HeraldError.self) { try await verifier.verify(unknown) }
        }
        // The first unknown kid may be a rotation: one refetch; the rest wait for the interval.
        #expect(await fetches.value == 2)
    }
}

private actor Counter {
    var value = 0
    func add() { value += 1 }
}

@Suite struct AuthorizationTests {
    let keys = ServerKeys(list: "main=0123456789abcdef0123")!

    func grant(
        channels: [String] = ["orders"],
        publish: [String] = [],
        checks: Bool = false,
        subject: String? = "bob"
    )
        -> Principal
    {
        .client(
            ClientGrant(
                subject: subject,
                channels: PatternSet(channels.compactMap(ChannelPattern.init)),
                publish: PatternSet(publish.compactMap(ChannelPattern.init)),
                checks: checks,
                expires: Timestamp(millisecondsSince1970: Timestamp.now().millisecondsSince1970 + 60_000)
            )
        )
    }

    func code(_ body: () throws(HeraldError) -> Void) -> HeraldError.Code? {
        do {
            try body()
            return nil
        } catch {
            return error.code
        }
    }

    @Test func withoutATokenKeyEveryChannelIsPublic() {
        let access = Access(keys: keys)
        #expect(access.publicChannels.matchesEverything)
        #expect(
            code { () throws(HeraldError) in try access.authorizeRead(ChannelName("orders")!, by: .anonymous) } == nil
        )
    }

    @Test func theServerRoutesTakeTheServerKeyOnlyNotAnAdminToken() {
        let access = Access(keys: keys)
        let admin = Principal.client(
            ClientGrant(
                admin: true,
                expires: Timestamp(millisecondsSince1970: Timestamp.now().millisecondsSince1970 + 60_000)
            )
        )
        #expect(code { () throws(HeraldError) in try access.requireServer(admin) } == .forbidden)
        #expect(code { () throws(HeraldError) in try access.requireServer(.anonymous) } == .unauthorized)
        #expect(code { () throws(HeraldError) in try access.requireServer(.server(key: "main")) } == nil)
    }

    @Test func anExpiredGrantIsRefusedWhateverItsTimersSay() async throws {
        let access = Access(keys: keys, verifier: try await TokenVerifier(TokenKeys(secret: secret)))
        let past = Principal.client(
            ClientGrant(channels: PatternSet(list: "*")!, publish: PatternSet(list: "*")!, expires: .now())
        )
        let orders = ChannelName("orders")!
        #expect(code { () throws(HeraldError) in try access.authorizeRead(orders, by: past) } == .tokenExpired)
        #expect(code { () throws(HeraldError) in try access.authorizePublish(orders, by: past) } == .tokenExpired)
    }

    @Test func withATokenKeyChannelsArePrivateButCheckChannelsAreNot() async throws {
        let access = Access(keys: keys, verifier: try await TokenVerifier(TokenKeys(secret: secret)))
        let orders = ChannelName("orders")!
        let other = ChannelName("other")!
        #expect(code { () throws(HeraldError) in try access.authorizeRead(orders, by: .anonymous) } == .tokenRequired)
        #expect(code { () throws(HeraldError) in try access.authorizeRead(orders, by: grant()) } == nil)
        #expect(code { () throws(HeraldError) in try access.authorizeRead(other, by: grant()) } == .channelForbidden)
        #expect(code { () throws(HeraldError) in try access.authorizeRead(other, by: .server(key: "main")) } == nil)
        let check = CheckID.random().channel
        #expect(code { () throws(HeraldError) in try access.authorizeRead(check, by: .anonymous) } == nil)
    }

    @Test func publishingNeedsAGrantOrTheKey() async throws {
        let access = Access(keys: keys, verifier: try await TokenVerifier(TokenKeys(secret: secret)))
        let room = ChannelName("chat:1")!
        #expect(code { () throws(HeraldError) in try access.authorizePublish(room, by: .anonymous) } == .tokenRequired)
        #expect(code { () throws(HeraldError) in try access.authorizePublish(room, by: grant()) } == .channelForbidden)
        #expect(
            code { () throws(HeraldError) in try access.authorizePublish(room, by: grant(publish: ["chat:*"])) } == nil
        )
        #expect(code { () throws(HeraldError) in try access.authorizePublish(room, by: .server(key: "main")) } == nil)
        #expect(
            code { () throws(HeraldError) in try Access(keys: keys).authorizePublish(room, by: .anonymous) }
                == .unauthorized
        )
    }

    @Test func creatingChecksFollowsTheSettingAndTheAllowedTargets() throws {
        let delay = try CheckSpec.validate(.object(["kind": .string("delay"), "params": .object(["ms": .int(10)])]))
        let probe = try CheckSpec.validate(
            .object(["kind": .string("tcp"), "params": .object(["host": .string("db.internal"), "port": .int(5432)])])
        )
        var access = Access(keys: keys, checkCreators: .token)
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(delay, by: .anonymous) } == .tokenRequired)
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(delay, by: grant()) } == .forbidden)
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(delay, by: grant(checks: true)) } == nil)
        access.checkCreators = .key
        #expect(
            code { () throws(HeraldError) in try access.authorizeCreate(delay, by: grant(checks: true)) } == .forbidden
        )
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(delay, by: .server(key: "main")) } == nil)
        access.checkCreators = .anyone
        access.allowedTargets = PatternSet(list: "*.example.com,db.internal:5433")
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(probe, by: .anonymous) } == .forbidden)
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(probe, by: .server(key: "main")) } == nil)
        access.allowedTargets = PatternSet(list: "db.internal:5432")
        #expect(code { () throws(HeraldError) in try access.authorizeCreate(probe, by: .anonymous) } == nil)
    }

    @Test func cancellingNeedsTheCapabilityTheCreatorOrTheKey() throws {
        let access = Access(keys: keys)
        let (owner, capability) = access.owner(for: grant(subject: "bob"))
        let spec = try CheckSpec.validate(.object(["kind": .string("delay"), "params": .object(["ms": .int(10)])]))
        let check = Check(id: .random(), spec: spec, createdAt: .now(), owner: owner)
        let byAnyone = { (principal: Principal, token: String?) in
            code { () throws(HeraldError) in try access.authorizeCancel(check, by: principal, capability: token) }
        }
        #expect(byAnyone(.anonymous, nil) == .unauthorized)
        #expect(byAnyone(.anonymous, "hct_wrong") == .forbidden)
        #expect(byAnyone(.anonymous, capability) == nil)
        #expect(byAnyone(grant(subject: "bob"), nil) == nil)
        #expect(byAnyone(grant(subject: "eve"), nil) == .forbidden)
        #expect(byAnyone(.server(key: "main"), nil) == nil)
    }
}
