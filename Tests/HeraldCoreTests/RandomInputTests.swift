import Foundation
import Testing

@testable import HeraldCore

/// A seeded generator, so a failing random case is the same on every run.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Bytes a fuzzer would try: mostly JSON-ish punctuation, digits and escapes, some anything.
    mutating func text(maxLength: Int, alphabet: [UInt8]) -> [UInt8] {
        (0..<Int.random(in: 0...maxLength, using: &self)).map { _ in
            Bool.random(using: &self) ? alphabet.randomElement(using: &self)! : UInt8.random(in: 0...255, using: &self)
        }
    }
}

/// Randomised inputs for the parsers of client input in HeraldCore: whatever they are given,
/// they answer or refuse; they never trap.
@Suite struct RandomInputTests {
    static let jsonAlphabet = Array(#"{}[]":,.-+eE0123456789 \ntrufalsn"kindu0061"#.utf8)

    @Test(arguments: 0..<4)
    func jsonParsingNeverTrapsAndRefusesEveryDuplicateKey(seed: UInt64) {
        var random = SeededRandom(seed: seed)
        for _ in 0..<5_000 {
            let bytes = random.text(maxLength: 40, alphabet: Self.jsonAlphabet)
            guard let value = try? JSONValue.parse(Data(bytes)) else { continue }
            // What parses has no repeated key in any object: re-serialized, it parses again.
            #expect((try? JSONValue.parse(Data(value.jsonText.utf8))) == value)
        }
    }

    @Test(arguments: [
        #"{"a":1,"a":2}"#, #"{"a":{"b":1},"b":1,"a":3}"#, #"[{"k":1,"k":1}]"#,
        #"{"x":[{"k":1}],"y":{"k":1,"\u006b":2}}"#,
        #"{"a\"b":1,"a\"b":2}"#,
    ])
    func duplicateKeysAreRefusedAtAnyDepth(text: String) {
        #expect(throws: JSONValue.ParseError.self) { try JSONValue.parse(Data(text.utf8)) }
    }

    @Test(arguments: [#"{"a":1,"b":{"a":1}}"#, #"[{"k":1},{"k":2}]"#, #"{"a\"":1,"a":2}"#, #""{\"k\":1,\"k\":1}""#])
    func theSameKeyInDifferentObjectsOrInAStringIsFine(text: String) throws {
        _ = try JSONValue.parse(Data(text.utf8))
    }

    @Test(arguments: 0..<4)
    func aClientsSecondsNeverOverflowADuration(seed: UInt64) {
        var random = SeededRandom(seed: seed)
        let cap = Duration.seconds(60)
        let edges: [Double] = [
            0, 1e-300, 0.0005, 59.999, 60, 60.0001, 9.3e15, 9.223372036854775e15, 1e300, .greatestFiniteMagnitude,
        ]
        let draws = (0..<10_000).map { _ in Double(bitPattern: random.next()).magnitude }.filter(\.isFinite)
        for seconds in edges + draws {
            let duration = Duration(seconds: seconds, atMost: cap)
            #expect(duration >= .zero && duration <= cap)
        }
    }
}
