extension Duration {
    /// A client's number of seconds as a duration, capped at `cap` *before* any conversion,
    /// so no value (`1e300`, `9300000000000000`) can overflow an integer on the way.
    ///
    /// - Precondition: `seconds` is finite and not negative (callers refuse anything else).
    package init(seconds: Double, atMost cap: Duration) {
        let capSeconds = Double(cap.components.seconds) + Double(cap.components.attoseconds) * 1e-18
        guard seconds < capSeconds else {
            self = cap
            return
        }
        self = .milliseconds(Int64((seconds * 1000).rounded(.down)))
    }
}

extension Duration {
    /// Whole milliseconds, for storing and comparing with ``Timestamp``.
    package var milliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}
