internal import Crypto
internal import Foundation

/// Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
/// keyed with the bytes of the `whsec_` secret.
package enum WebhookSigner {
    /// The `webhook-signature` value for one attempt, or `nil` for a malformed secret.
    package static func signature(secret: String, id: String, timestamp: Int64, body: String) -> String? {
        guard secret.hasPrefix("whsec_"), let key = Data(base64Encoded: String(secret.dropFirst(6))) else {
            return nil
        }
        let mac = HMAC<SHA256>.authenticationCode(
            for: Data("\(id).\(timestamp).\(body)".utf8),
            using: SymmetricKey(data: key)
        )
        return "v1," + Data(mac).base64EncodedString()
    }

    /// The header for several secrets (a rotation's overlap): their signatures, space-separated.
    /// Receivers accept a delivery when any one of them verifies.
    package static func signature(secrets: [String], id: String, timestamp: Int64, body: String) -> String? {
        var signatures: [String] = []
        for secret in secrets {
            guard let one = signature(secret: secret, id: id, timestamp: timestamp, body: body) else { return nil }
            signatures.append(one)
        }
        return signatures.isEmpty ? nil : signatures.joined(separator: " ")
    }
}
