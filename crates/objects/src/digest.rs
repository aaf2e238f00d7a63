//! The SHA-256 digest that names every stored object.
//!
//! Content addressing only works if every component agrees on one spelling of a digest, so the
//! textual form is fixed to exactly 64 lowercase hex characters: parsing is strict rather than
//! forgiving, which keeps keys, audit records and API payloads byte-for-byte comparable.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{ObjectError, ObjectErrorKind};

/// Length of a digest in its textual (hex) form.
const HEX_LEN: usize = 64;

/// SHA-256 of an object's content, which is also its address in the store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectDigest([u8; 32]);

impl ObjectDigest {
    /// Wraps raw digest bytes, for callers that already hold a SHA-256 output.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Hashes `data` in one go; streaming callers use the store, which hashes incrementally.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw 32 digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The lowercase hex spelling, as used in keys and APIs.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Finishes an incremental hash, kept crate-private so the hasher type stays an internal detail.
    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

impl fmt::Display for ObjectDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ObjectDigest {
    // Debug output shows the hex form because a byte array dump is unreadable in logs and asserts
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectDigest({self})")
    }
}

impl FromStr for ObjectDigest {
    type Err = ObjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != HEX_LEN {
            return Err(ObjectError::new(
                ObjectErrorKind::InvalidDigest,
                format!("invalid digest: expected {HEX_LEN} lowercase hex characters, got {} bytes", s.len()),
            ));
        }
        // hex::decode also accepts uppercase, which would give one object two spellings, so the
        // alphabet is checked first
        if let Some((position, c)) = s.char_indices().find(|&(_, c)| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(ObjectError::new(
                ObjectErrorKind::InvalidDigest,
                format!("invalid digest: character {c:?} at position {position} is not lowercase hex"),
            ));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|e| ObjectError::new(ObjectErrorKind::InvalidDigest, format!("invalid digest: {e}")))?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let digest = ObjectDigest::of(b"hello");
        let text = digest.to_string();
        assert_eq!(text, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(text, digest.to_hex());
        assert_eq!(text.parse::<ObjectDigest>().unwrap(), digest);
        assert_eq!(format!("{digest:?}"), format!("ObjectDigest({text})"), "debug output is the readable hex form");
    }

    #[test]
    fn invalid_digest_strings_are_rejected() {
        let valid = ObjectDigest::of(b"x").to_string();
        let cases = [
            String::new(),
            valid[..63].to_string(),
            format!("{valid}0"),
            valid.to_uppercase(),
            format!("g{}", &valid[1..]),
            format!("{} ", &valid[..63]),
            format!("sha256:{}", &valid[..57]),
            // A multi-byte character keeps the byte length at 64 but must still fail cleanly
            format!("é{}", &valid[2..]),
        ];
        for case in cases {
            let err = case.parse::<ObjectDigest>().unwrap_err();
            assert_eq!(err.kind(), ObjectErrorKind::InvalidDigest, "{case:?}");
            let message = err.to_string();
            assert!(message.starts_with("invalid digest"), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
    }

    #[test]
    fn bytes_accessors_agree() {
        let digest = ObjectDigest::of(b"abc");
        assert_eq!(ObjectDigest::from_bytes(*digest.as_bytes()), digest);
    }
}
