import Foundation
import HeraldHTTP
import HeraldStore
import Testing

@testable import HeraldServer

@Suite struct ConfigurationLoaderTests {
    private func file(_ json: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("herald-\(UUID().uuidString).json")
            .path
        try json.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func flagsBeatEnvironmentBeatsFileBeatsDefault() throws {
        let path = try file(#"{"port": 9001, "host": "0.0.0.0", "max-wait": 30, "history-max-events": 5}"#)
        let configuration = try ConfigurationLoader.load(
            flags: ["config": path, "port": "9003"],
            environment: ["HERALD_PORT": "9002", "HERALD_HOST": "::1", "HERALD_API_KEY": "k-123456789"]
        )
        #expect(configuration.port == 9003)
        #expect(configuration.host == "::1")
        #expect(configuration.http.maxWait == .seconds(30))
        #expect(configuration.retention.maxEventsPerChannel == 5)
        #expect(configuration.grpcPort == 8081)
        #expect(configuration.apiKey == "k-123456789" && !configuration.apiKeyWasGenerated)
    }

    @Test func aMissingKeyIsGenerated() throws {
        let configuration = try ConfigurationLoader.load(flags: [:], environment: [:])
        #expect(configuration.apiKeyWasGenerated && configuration.apiKey.utf8.count >= 32)
    }

    @Test(arguments: [
        (["port": "http"], "port must be an integer"),
        (["store": "mysql://x"], "store must be"),
        (["tls-cert": "a.pem"], "tls-cert and tls-key go together"),
        (["webhook-retry-schedule": "5,x"], "webhook-retry-schedule"),
        (["nonsense": "1"], "unknown setting 'nonsense'"),
    ])
    func badValuesAreRefusedWithOneLine(flags: [String: String], message: String) {
        #expect {
            _ = try ConfigurationLoader.load(flags: flags, environment: [:])
        } throws: { error in
            let text = (error as? ConfigurationError)?.message ?? ""
            return text.contains(message) && !text.contains("\n")
        }
    }

    @Test func aConfigFileWithAnUnknownKeyIsRefused() throws {
        let path = try file(#"{"prot": 1}"#)
        #expect(throws: ConfigurationError.self) {
            try ConfigurationLoader.load(flags: ["config": path], environment: [:])
        }
    }
}
