//! The measurement header at the start of every payload squall publishes.
//!
//! Subscribers use it to compute end-to-end latency and to keep the delivery ledger, so its
//! layout is a contract between agents (possibly of different builds) and is versioned.
//!
//! ```text
//! offset size field
//!  0      2   magic, the bytes "SQ" (0x53 0x51)
//!  2      1   version = 1
//!  3      1   flags, reserved, 0
//!  4      4   run tag: random per run; messages of another run are counted as stale
//!  8      4   stream: the publisher's index in the run (unique across groups and agents)
//! 12      8   sequence: 0, 1, 2 … per stream, no gaps at the sender
//! 20      8   intended send time: ns since the Unix epoch, from the publish schedule
//! 28      8   actual send time: ns since the Unix epoch, when the PUBLISH was encoded
//! 36      …   filler up to the configured payload size, or the fixed payload
//! ```
//! All integers are big-endian. Latency on receipt: raw = receive − actual, corrected =
//! receive − intended (see the README's "Measurement" section).

/// Bytes taken by the header; the smallest payload that can carry a measurement.
pub use squall_proto::plan::HEADER_LEN;
const MAGIC: [u8; 2] = *b"SQ";
const VERSION: u8 = 1;

/// The fields of a measurement header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run_tag: u32,
    pub stream: u32,
    pub seq: u64,
    pub intended_ns: u64,
    pub sent_ns: u64,
}

/// Why a payload carries no usable header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    /// Too short, wrong magic or an unknown version: not published by squall.
    NotSquall,
}

impl Header {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    #[inline]
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..2].copy_from_slice(&MAGIC);
        out[2] = VERSION;
        out[3] = 0;
        out[4..8].copy_from_slice(&self.run_tag.to_be_bytes());
        out[8..12].copy_from_slice(&self.stream.to_be_bytes());
        out[12..20].copy_from_slice(&self.seq.to_be_bytes());
        out[20..28].copy_from_slice(&self.intended_ns.to_be_bytes());
        out[28..36].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        self.write(&mut out);
        out
    }

    /// Reads a header from the start of a payload.
    #[inline]
    pub fn read(payload: &[u8]) -> Result<Header, Foreign> {
        let Some(h) = payload.get(..HEADER_LEN) else {
            return Err(Foreign::NotSquall);
        };
        if h[0..2] != MAGIC || h[2] != VERSION {
            return Err(Foreign::NotSquall);
        }
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().unwrap());
        Ok(Header {
            run_tag: u32_at(4),
            stream: u32_at(8),
            seq: u64_at(12),
            intended_ns: u64_at(20),
            sent_ns: u64_at(28),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(run_tag: u32, stream: u32, seq: u64, intended_ns: u64, sent_ns: u64,
                              tail in proptest::collection::vec(any::<u8>(), 0..64)) {
            let h = Header { run_tag, stream, seq, intended_ns, sent_ns };
            let mut payload = h.to_bytes().to_vec();
            payload.extend_from_slice(&tail);
            prop_assert_eq!(Header::read(&payload), Ok(h));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Header::read(&bytes);
        }
    }

    #[test]
    fn foreign_payloads_are_recognised() {
        assert_eq!(Header::read(b"hello"), Err(Foreign::NotSquall));
        let mut h = Header { run_tag: 1, stream: 2, seq: 3, intended_ns: 4, sent_ns: 5 }.to_bytes();
        h[2] = 9; // unknown version
        assert_eq!(Header::read(&h), Err(Foreign::NotSquall));
    }

    #[test]
    fn layout_is_stable() {
        let h = Header { run_tag: 0x0102_0304, stream: 7, seq: 1, intended_ns: 2, sent_ns: 3 };
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b"SQ\x01\x00");
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[8..12], &[0, 0, 0, 7]);
        assert_eq!(b[19], 1);
        assert_eq!(b[27], 2);
        assert_eq!(b[35], 3);
    }
}
