//! [`ReceiveLimits`]: what a peer may send over one link.

use pluresdb_security::RateLimit;

/// What each peer may send a node, per connection. A peer over a limit is
/// sent an `Error` frame (`rate_limited` or `bad_frame`) and disconnected;
/// other peers are unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveLimits {
    /// Frames per second, sustained and burst. Default: 20,000/s with
    /// bursts of 40,000: a busy honest peer sends a push per commit (the
    /// store commits at most a few thousand times a second) plus acks and
    /// heartbeats; a flood is far above that.
    pub frames: RateLimit,
    /// Received payload in KiB per second, sustained and burst. Default:
    /// 256 MiB/s with bursts of 512 MiB (a burst must hold the largest
    /// frame, 16 MiB).
    pub kib: RateLimit,
    /// The largest frame payload accepted after the handshake. Default and
    /// maximum: `codec::MAX_PAYLOAD_BYTES` (16 MiB). During the handshake
    /// the limit is 64 KiB.
    pub max_payload: usize,
}

impl Default for ReceiveLimits {
    fn default() -> Self {
        Self {
            frames: RateLimit { messages_per_second: 20_000, burst: 40_000 },
            kib: RateLimit { messages_per_second: 256 * 1024, burst: 512 * 1024 },
            max_payload: crate::codec::MAX_PAYLOAD_BYTES,
        }
    }
}
