//! Random secrets and their one-way digests. API keys are shown once and stored only as a
//! SHA-256 digest: a 256-bit random secret needs no slow password hash, because it cannot be
//! guessed from its digest by brute force.

use sha2::{Digest, Sha256};

/// 32 bytes from the operating system's generator.
pub fn random_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // The OS generator failing means the machine cannot produce secrets at all; there is no
    // sensible fallback.
    getrandom::getrandom(&mut bytes).expect("the operating system random generator failed");
    bytes
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// An API key secret as shown to its holder: a recognisable prefix, then 256 random bits.
pub fn new_api_key_secret() -> String {
    format!("fk_{}", hex::encode(random_bytes()))
}

pub fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Reads back a secret written by `encode_hex`.
pub fn decode_hex_secret(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok()?.try_into().ok()
}

/// A short random identifier for rows that need no ordering.
pub fn new_id(prefix: &str) -> String {
    let bytes = random_bytes();
    format!("{prefix}_{}", hex::encode(&bytes[..10]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_long_and_distinct() {
        let a = super::new_api_key_secret();
        let b = super::new_api_key_secret();
        assert_eq!(a.len(), 3 + 64);
        assert_ne!(a, b);
        assert_eq!(super::sha256_hex(b"").len(), 64);
    }
}
