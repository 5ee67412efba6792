import Foundation
import Testing

@testable import HeraldCore

@Suite struct CheckSpecTests {
    private func spec(_ json: String) throws -> CheckSpec {
        try CheckSpec.validate(try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8)))
    }

    @Test func validRequestsGetTheirDefaults() throws {
        #expect(
            try spec(#"{"kind":"delay","params":{"ms":300}}"#).parameters
                == .delay(milliseconds: 300, outcome: .done, result: nil)
        )
        #expect(
            try spec(#"{"kind":"http","params":{"url":"https://example.com/x?y=1"}}"#).parameters
                == .http(
                    url: "https://example.com/x?y=1",
                    method: "GET",
                    expectStatus: 200,
                    timeoutMilliseconds: 10_000
                )
        )
        #expect(
            try spec(#"{"kind":"tcp","params":{"host":"example.com","port":443}}"#).parameters
                == .tcp(host: "example.com", port: 443, timeoutMilliseconds: 10_000)
        )
        #expect(try spec(#"{"kind":"external","params":{"anything":[1]}}"#).kind == .external)
    }

    @Test func aCallbackGetsTheTerminalEventOrEveryOne() throws {
        let terminal = try spec(#"{"kind":"delay","params":{"ms":1},"callback_url":"https://x.test/"}"#)
        #expect(terminal.callbackEvents == .terminal)
        #expect(!terminal.calls(.processing) && terminal.calls(.done) && terminal.calls(.canceled))
        var all = try spec(
            #"{"kind":"delay","params":{"ms":1},"callback_url":"https://x.test/","callback_events":"all"}"#
        )
        #expect(all.calls(.processing) && all.calls(.failed))
        all.callbackStopped = true
        #expect(!all.calls(.processing) && !all.calls(.done))
        #expect(!(try spec(#"{"kind":"delay","params":{"ms":1}}"#)).calls(.done))
    }

    @Test(arguments: [
        (#"[]"#, "the body must be a JSON object"),
        (#"{}"#, "kind is required"),
        (#"{"kind":"sleep"}"#, "kind 'sleep' is unknown"),
        (#"{"kind":"delay","params":{}}"#, "params.ms is required"),
        (#"{"kind":"delay","params":{"ms":600001}}"#, "params.ms must be an integer in 0...600000"),
        (#"{"kind":"delay","params":{"ms":1.5}}"#, "params.ms must be an integer"),
        (#"{"kind":"delay","params":{"ms":1,"outcome":"maybe"}}"#, "params.outcome"),
        (#"{"kind":"delay","params":{"ms":1,"extra":1}}"#, "params.extra is not a known field"),
        (#"{"kind":"http","params":{"url":"ftp://x.test/"}}"#, "must use http or https"),
        (#"{"kind":"http","params":{"url":"http://u:p@x.test/"}}"#, "must not carry credentials"),
        (#"{"kind":"http","params":{"url":"http://x.test/","method":"POST"}}"#, "params.method"),
        (#"{"kind":"http","params":{"url":"http://x.test/","timeout_ms":0}}"#, "params.timeout_ms"),
        (#"{"kind":"tcp","params":{"host":"bad host","port":1}}"#, "params.host"),
        (#"{"kind":"tcp","params":{"host":"x.test","port":70000}}"#, "params.port"),
        (#"{"kind":"delay","params":{"ms":1},"callback_url":"javascript:alert(1)"}"#, "callback_url"),
        (
            #"{"kind":"delay","params":{"ms":1},"callback_url":"https://x.test/","callback_secret":"nope"}"#,
            "callback_secret"
        ),
        (#"{"kind":"delay","params":{"ms":1},"color":"red"}"#, "color is not a known field"),
        (
            #"{"kind":"delay","params":{"ms":1},"callback_url":"https://x.test/","callback_events":"some"}"#,
            "callback_events must be"
        ),
        (#"{"kind":"delay","params":{"ms":1},"callback_events":"all"}"#, "callback_events is given without"),
    ])
    func invalidRequestsNameTheField(json: String, message: String) throws {
        #expect {
            _ = try spec(json)
        } throws: { error in
            guard let error = error as? HeraldError else { return false }
            return error.code == .invalid && error.message.contains(message)
        }
    }
}
