//! The deterministic byte pattern of large transfers (`/bytes/<n>`,
//! `/sha256` uploads, tcp-echo, TLS echo) and how it is checked.
//!
//! Byte `i` of the pattern is `TABLE[i % PERIOD]`, where the table is a fixed
//! hash of the index. The period is a prime, so a chunk that is lost,
//! repeated or shifted by any power-of-two amount changes what follows, and
//! both ends can produce or check any window without state beyond the offset.
//! Windows are slices of one static table, so streaming a pattern body
//! copies nothing and checking one is a memcmp.

use std::sync::LazyLock;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Length of the repeating unit: the largest prime below 2^16.
pub const PERIOD: usize = 65_521;
/// Largest window handed out at once (one body frame).
pub const CHUNK: usize = 64 * 1024;

/// `PERIOD + CHUNK` bytes, so every window of up to `CHUNK` bytes starting
/// anywhere in the period is one contiguous slice.
static TABLE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    (0..PERIOD + CHUNK)
        .map(|i| byte_at_index((i % PERIOD) as u32))
        .collect()
});

/// A fixed hash of the index (a multiplicative hash with a final mix), so
/// neighbouring bytes differ and the pattern compresses poorly.
fn byte_at_index(i: u32) -> u8 {
    let mut x = i.wrapping_add(1).wrapping_mul(0x9E37_79B1);
    x ^= x >> 15;
    x = x.wrapping_mul(0x85EB_CA77);
    x ^= x >> 13;
    (x >> 24) as u8
}

/// Byte `offset` of the pattern.
pub fn byte_at(offset: u64) -> u8 {
    TABLE[(offset % PERIOD as u64) as usize]
}

/// The pattern from `offset`, at most `max` (and at most [`CHUNK`]) bytes,
/// as a static slice.
pub fn window(offset: u64, max: usize) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    let table: &'static [u8] = &TABLE;
    &table[start..start + max.min(CHUNK)]
}

/// The pattern from `offset`, up to `max` bytes, as a zero-copy `Bytes`.
pub fn chunk(offset: u64, max: usize) -> Bytes {
    Bytes::from_static(window(offset, max))
}

/// The first `len` bytes of the pattern in one buffer (for small transfers).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(window(out.len() as u64, len - out.len()));
    }
    out
}

/// `len` pattern bytes from `offset`, zero-copy when they fit one window.
pub fn pattern_from(offset: u64, len: usize) -> Bytes {
    if len <= CHUNK {
        return chunk(offset, len);
    }
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(window(offset + out.len() as u64, len - out.len()));
    }
    Bytes::from(out)
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// SHA-256 of a byte string, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of the first `len` bytes of the pattern, as lower-case hex.
pub fn pattern_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut offset = 0u64;
    while offset < len {
        let w = window(offset, usize::try_from(len - offset).unwrap_or(CHUNK));
        hasher.update(w);
        offset += w.len() as u64;
    }
    hex(&hasher.finalize())
}

/// Streams data through SHA-256 and counts it.
#[derive(Debug, Clone, Default)]
pub struct Sha256Stream {
    hasher: Sha256,
    bytes: u64,
}

impl Sha256Stream {
    pub fn new() -> Sha256Stream {
        Sha256Stream::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The byte count and the hex digest.
    pub fn finish(self) -> (u64, String) {
        (self.bytes, hex(&self.hasher.finalize()))
    }
}

/// Checks data arriving in chunks of any size against the pattern: length,
/// content (naming the first differing offset) and SHA-256.
#[derive(Debug, Clone)]
pub struct PatternCheck {
    expected_len: u64,
    hash: Sha256Stream,
    first_mismatch: Option<u64>,
}

/// What a [`PatternCheck`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub expected_bytes: u64,
    pub bytes: u64,
    /// SHA-256 of what arrived.
    pub sha256: String,
    /// SHA-256 of the pattern of the expected length.
    pub expected_sha256: String,
    /// Offset of the first byte that differs from the pattern.
    pub first_mismatch: Option<u64>,
}

impl CheckResult {
    /// `None` when everything matched, else why not.
    pub fn problem(&self) -> Option<String> {
        if self.bytes != self.expected_bytes {
            return Some(format!(
                "got {} bytes, expected {}",
                self.bytes, self.expected_bytes
            ));
        }
        if let Some(at) = self.first_mismatch {
            return Some(format!("content differs from the pattern at byte {at}"));
        }
        if self.sha256 != self.expected_sha256 {
            return Some(format!(
                "sha256 {} differs from the pattern's {}",
                self.sha256, self.expected_sha256
            ));
        }
        None
    }
}

impl PatternCheck {
    pub fn new(expected_len: u64) -> PatternCheck {
        PatternCheck {
            expected_len,
            hash: Sha256Stream::new(),
            first_mismatch: None,
        }
    }

    /// Bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.hash.bytes()
    }

    pub fn update(&mut self, data: &[u8]) {
        if self.first_mismatch.is_none() {
            let mut done = 0usize;
            while done < data.len() {
                let at = self.hash.bytes() + done as u64;
                let want = window(at, data.len() - done);
                let got = &data[done..done + want.len()];
                if got != want {
                    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
                    self.first_mismatch = Some(at + i as u64);
                    break;
                }
                done += want.len();
            }
        }
        self.hash.update(data);
    }

    pub fn finish(self) -> CheckResult {
        let expected = pattern_sha256(self.expected_len);
        self.finish_against(expected)
    }

    /// Like [`PatternCheck::finish`], with the expected digest already known
    /// (it costs a pass over the pattern; a run of many transfers makes it once).
    pub fn finish_against(self, expected_sha256: String) -> CheckResult {
        let (bytes, sha256) = self.hash.finish();
        CheckResult {
            expected_bytes: self.expected_len,
            bytes,
            sha256,
            expected_sha256,
            first_mismatch: self.first_mismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_agree_with_bytes_and_wrap_around_the_period() {
        let near_end = PERIOD as u64 - 3;
        let w = window(near_end, 10);
        assert_eq!(w.len(), 10);
        for (i, b) in w.iter().enumerate() {
            assert_eq!(*b, byte_at(near_end + i as u64), "byte {i}");
        }
        assert_eq!(byte_at(0), byte_at(PERIOD as u64));
        assert_eq!(window(5, 1_000_000).len(), CHUNK, "windows are capped");
        assert_eq!(pattern(3 * PERIOD + 17).len(), 3 * PERIOD + 17);
        assert_eq!(pattern(100)[..], window(0, 100)[..]);
        let from = pattern_from(7, CHUNK + 10);
        assert_eq!(from[..], pattern(CHUNK + 17)[7..]);
        assert_eq!(pattern_from(7, 3)[..], pattern(10)[7..]);
        // Not a trivial pattern: many distinct values, neighbours differ often.
        let p = pattern(4096);
        let distinct: std::collections::BTreeSet<u8> = p.iter().copied().collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
        let same = p.windows(2).filter(|w| w[0] == w[1]).count();
        assert!(same < 64, "{same}");
    }

    #[test]
    fn sha256_of_known_inputs() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(pattern_sha256(0), sha256_hex(b""));
        for len in [1usize, 100, PERIOD, PERIOD + 1, CHUNK * 3 + 5] {
            assert_eq!(
                pattern_sha256(len as u64),
                sha256_hex(&pattern(len)),
                "{len}"
            );
        }
        let mut s = Sha256Stream::new();
        s.update(b"a");
        s.update(b"bc");
        assert_eq!(s.finish(), (3, sha256_hex(b"abc")));
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }

    #[test]
    fn check_accepts_the_pattern_in_any_chunking() {
        let len = 2 * PERIOD + 999;
        let data = pattern(len);
        for step in [1usize, 7, 4096, PERIOD, len] {
            let mut check = PatternCheck::new(len as u64);
            for part in data.chunks(step) {
                check.update(part);
            }
            let r = check.finish();
            assert_eq!(r.problem(), None, "step {step}");
            assert_eq!(r.sha256, r.expected_sha256);
            assert_eq!(r.bytes, len as u64);
        }
    }

    #[test]
    fn check_names_what_is_wrong() {
        let len = 3 * PERIOD;
        let mut data = pattern(len);
        data[PERIOD + 10] ^= 0x40;
        let mut check = PatternCheck::new(len as u64);
        for part in data.chunks(1000) {
            check.update(part);
        }
        let r = check.finish();
        assert_eq!(r.first_mismatch, Some(PERIOD as u64 + 10));
        assert!(r.problem().unwrap().contains("at byte 65531"), "{r:?}");
        assert_ne!(r.sha256, r.expected_sha256);

        // A lost chunk shifts everything after it.
        let data = pattern(len);
        let mut check = PatternCheck::new(len as u64);
        check.update(&data[..4096]);
        check.update(&data[8192..]);
        let r = check.finish();
        assert_eq!(r.first_mismatch, Some(4096));
        assert!(r.problem().unwrap().contains("expected"), "{r:?}");

        // Short but correct so far: the length is the problem.
        let mut check = PatternCheck::new(10);
        check.update(&pattern(9));
        let r = check.finish();
        assert_eq!(r.first_mismatch, None);
        assert_eq!(r.problem().unwrap(), "got 9 bytes, expected 10");
    }
}
