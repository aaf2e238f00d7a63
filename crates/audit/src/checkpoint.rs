//! Signed checkpoints: the log's size and root, signed by the factory's audit key.
//!
//! A root alone proves nothing to someone who did not compute it; a signed checkpoint lets an
//! auditor hold the factory to a particular history, and any two checkpoints can later be tied
//! together by a consistency proof. Rather than a bespoke format we use the ones the transparency
//! log ecosystem already shares, so that external witnesses and tools can read our checkpoints:
//!
//! * the body follows C2SP tlog-checkpoint: an origin line, the tree size in decimal, the root
//!   in standard base64, then optional extension lines, each line ending in a newline;
//! * the signature follows C2SP signed-note with Ed25519 (key type 0x01): a blank line after the
//!   body, then one line per signature, `— <key name> <base64(key id || signature)>`, where the
//!   key id is the first four bytes of SHA-256(key name || "\n" || 0x01 || public key). The key
//!   text formats match Go's `golang.org/x/mod/sumdb/note` package.
//!
//! Parsing is strict: a checkpoint that is accepted has exactly one reading.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

/// The signed-note signature type byte of Ed25519 keys.
const ALG_ED25519: u8 = 0x01;
/// Every signature line starts with U+2014 EM DASH and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";
/// The prefix of the secret key text, as in Go's note package.
const SECRET_KEY_PREFIX: &str = "PRIVATE+KEY+";
/// More signature lines than this are refused, to bound the work done on hostile input
/// (Go's note package uses the same limit).
const MAX_SIGNATURES: usize = 100;

/// Why a key, a note or a checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Key names must be non-empty, without whitespace, control characters or '+'.
    #[error("key name {0:?} is empty or contains whitespace, control characters or '+'")]
    InvalidKeyName(String),
    /// The key text is not in the expected format.
    #[error("malformed key: {0}")]
    MalformedKey(String),
    /// The key id written in the key text is not the one the key and name produce.
    #[error("key id {stated:08x} does not match the key, whose id is {actual:08x}")]
    KeyIdMismatch {
        /// The id written in the key text.
        stated: u32,
        /// The id computed from the name and the key.
        actual: u32,
    },
    /// The note is not in signed-note format.
    #[error("malformed note: {0}")]
    MalformedNote(String),
    /// No signature line carries our key name and key id.
    #[error("note has no signature by {name}+{key_id:08x}")]
    NoSignature {
        /// The key name looked for.
        name: String,
        /// The key id looked for.
        key_id: u32,
    },
    /// A signature line claims to be by our key but does not verify.
    #[error("signature by {name} does not verify")]
    BadSignature {
        /// The key name of the failing signature.
        name: String,
    },
    /// The signed text is not a well-formed checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
}

/// A tree head: the log identified by `origin` had `size` records with Merkle root `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. "factory.local/audit". It must be non-empty and contain no
    /// newline or other control character, or the signed note will not verify.
    pub origin: String,
    /// The number of records covered.
    pub size: u64,
    /// The Merkle tree hash of those records.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body as signed: `"<origin>\n<size>\n<base64 root>\n"`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// Parses a checkpoint body strictly. Extension lines after the root are allowed (they
    /// must be non-empty) and ignored.
    pub fn from_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |reason: &str| CheckpointError::MalformedCheckpoint(reason.to_string());
        let text = body.strip_suffix('\n').ok_or_else(|| malformed("body does not end with a newline"))?;
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(malformed("body needs an origin, a size and a root hash line"));
        };
        if origin.is_empty() {
            return Err(malformed("origin is empty"));
        }
        if origin.chars().any(char::is_control) {
            return Err(malformed("origin contains a control character"));
        }
        let size =
            parse_size(size).ok_or_else(|| malformed("tree size is not a decimal number without leading zeros"))?;
        let root = parse_root(root).ok_or_else(|| malformed("root hash is not 32 bytes in standard base64"))?;
        if extensions.iter().any(|line| line.is_empty()) {
            return Err(malformed("extension lines must not be empty"));
        }
        Ok(Checkpoint { origin: (*origin).to_string(), size, root })
    }
}

/// A checkpoint as the factory publishes it outside its database: one JSON file per checkpoint
/// (named by [`PublishedCheckpoint::file_name`]) in a directory that only grows, for witnesses
/// to copy. Only `note` is evidence, being signed; the other fields repeat what it says for
/// people and tools reading the files, and a file whose fields disagree with its note is
/// refused rather than half-believed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PublishedCheckpoint {
    /// The checkpoint's origin line.
    pub origin: String,
    /// The number of records it covers.
    pub size: u64,
    /// Its root, standard base64 as in the note.
    pub root: String,
    /// When it was published, RFC 3339 UTC (not signed: the publisher's clock, for people).
    pub published_at: String,
    /// The signed note.
    pub note: String,
}

impl PublishedCheckpoint {
    /// The published form of `checkpoint`, whose signed note is `note`.
    pub fn new(checkpoint: &Checkpoint, note: &str, published_at: &str) -> Self {
        Self {
            origin: checkpoint.origin.clone(),
            size: checkpoint.size,
            root: STANDARD.encode(checkpoint.root),
            published_at: published_at.to_string(),
            note: note.to_string(),
        }
    }

    /// The file name of the checkpoint for `size`. The size is zero-padded so that names sort
    /// as sizes do, and a directory listing reads oldest first.
    pub fn file_name(size: u64) -> String {
        format!("checkpoint-{size:020}.json")
    }

    /// The size a [`PublishedCheckpoint::file_name`] names; `None` for other files.
    pub fn size_in_file_name(name: &str) -> Option<u64> {
        let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".json")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The file's text: pretty JSON ending in a newline.
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings and an integer cannot fail.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The signed note in a checkpoint file: a published JSON file, or a bare signed note as
    /// `GET /api/v1/audit/checkpoint` returns it. The signature is not checked here (that
    /// takes the verifier key); the JSON fields are checked against the note's text.
    pub fn note_in_file(text: &str) -> Result<String, CheckpointError> {
        if !text.trim_start().starts_with('{') {
            return Ok(text.to_string());
        }
        let published: PublishedCheckpoint = serde_json::from_str(text)
            .map_err(|e| CheckpointError::MalformedNote(format!("not a published checkpoint: {e}")))?;
        let split = published
            .note
            .rfind("\n\n")
            .ok_or_else(|| CheckpointError::MalformedNote("no blank line before the signatures".to_string()))?;
        let said = Checkpoint::from_body(&published.note[..split + 1])?;
        if said.origin != published.origin
            || said.size != published.size
            || STANDARD.encode(said.root) != published.root
        {
            return Err(CheckpointError::MalformedNote(
                "the file's origin, size or root differ from what its signed note says".to_string(),
            ));
        }
        Ok(published.note)
    }
}

/// A tree size: ASCII decimal, no sign, no leading zeros except "0" itself, within u64.
fn parse_size(text: &str) -> Option<u64> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !digits_only || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// A root hash: standard padded base64 of exactly 32 bytes, in its one canonical spelling.
fn parse_root(text: &str) -> Option<Hash> {
    let bytes = STANDARD.decode(text).ok()?;
    let root: Hash = bytes.try_into().ok()?;
    // The engine already refuses non-zero padding bits; comparing the re-encoding makes the
    // uniqueness of the accepted spelling explicit.
    (STANDARD.encode(root) == text).then_some(root)
}

/// Refuses key names that would make key texts or signature lines ambiguous.
fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    let bad = name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+');
    if bad {
        return Err(CheckpointError::InvalidKeyName(name.to_string()));
    }
    Ok(())
}

/// The signed-note key id of an Ed25519 key: the first four bytes, big-endian, of
/// SHA-256(name || "\n" || 0x01 || public key).
fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ALG_ED25519]);
    hasher.update(public_key);
    let digest = hasher.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Splits `<name>+<8 hex digit key id>+<base64(0x01 || 32 key bytes)>` into its parts. The
/// base64 may itself contain '+', so only the first two are separators.
fn parse_key_text(text: &str) -> Result<(&str, u32, [u8; 32]), CheckpointError> {
    let malformed = |reason: &str| CheckpointError::MalformedKey(reason.to_string());
    let (name, rest) = text.split_once('+').ok_or_else(|| malformed("expected <name>+<key id>+<key>"))?;
    check_key_name(name)?;
    let (id_hex, key_b64) = rest.split_once('+').ok_or_else(|| malformed("expected <name>+<key id>+<key>"))?;
    if id_hex.len() != 8 || !id_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("key id is not 8 hex digits"));
    }
    let id = u32::from_str_radix(id_hex, 16).map_err(|_| malformed("key id is not hex"))?;
    let data = STANDARD.decode(key_b64).map_err(|_| malformed("key is not standard base64"))?;
    match data.split_first() {
        Some((&ALG_ED25519, key)) => {
            let key: [u8; 32] = key.try_into().map_err(|_| malformed("an Ed25519 key is 32 bytes"))?;
            Ok((name, id, key))
        }
        Some((alg, _)) => {
            Err(CheckpointError::MalformedKey(format!("key type 0x{alg:02x} is not supported, only Ed25519 (0x01)")))
        }
        None => Err(malformed("key is empty")),
    }
}

/// Refuses note text with control characters other than newline, as signed-note requires.
fn check_note_text(text: &str) -> Result<(), CheckpointError> {
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(CheckpointError::MalformedNote("note contains a control character other than newline".to_string()));
    }
    Ok(())
}

/// Signs checkpoints with the factory's Ed25519 audit key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    key_id: u32,
}

impl fmt::Debug for NoteSigner {
    // Only the public identity; the signing key stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &format_args!("{:08x}", self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for key name `name` (e.g. "factory.local/audit") whose Ed25519 seed is
    /// `secret`. The caller supplies the 32 random bytes, which keeps this crate free of I/O.
    pub fn generate(name: &str, secret: [u8; 32]) -> Result<Self, CheckpointError> {
        check_key_name(name)?;
        let key = SigningKey::from_bytes(&secret);
        let key_id = key_id(name, &key.verifying_key().to_bytes());
        Ok(Self { name: name.to_string(), key, key_id })
    }

    /// Reads the text written by [`NoteSigner::secret_key_text`] (Go's note format).
    pub fn from_secret_key_text(text: &str) -> Result<Self, CheckpointError> {
        let rest = text
            .trim_end()
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or_else(|| CheckpointError::MalformedKey("secret key text must start with PRIVATE+KEY+".into()))?;
        let (name, stated, seed) = parse_key_text(rest)?;
        let signer = Self::generate(name, seed)?;
        if signer.key_id != stated {
            return Err(CheckpointError::KeyIdMismatch { stated, actual: signer.key_id });
        }
        Ok(signer)
    }

    /// `PRIVATE+KEY+<name>+<key id>+<base64(0x01 || seed)>`. This is the secret itself; store
    /// it like one.
    pub fn secret_key_text(&self) -> String {
        let mut data = Vec::with_capacity(33);
        data.push(ALG_ED25519);
        data.extend_from_slice(&self.key.to_bytes());
        format!("{SECRET_KEY_PREFIX}{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(data))
    }

    /// The public verifier key: `<name>+<key id>+<base64(0x01 || public key)>`.
    pub fn verifier_key(&self) -> String {
        self.verifier().verifier_key()
    }

    /// The verifier for this signer's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The signed note of `checkpoint`: its body, a blank line, and our signature line.
    ///
    /// The checkpoint is not validated here; an origin that is empty or holds a newline gives
    /// a note that [`NoteVerifier::verify`] refuses.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_unchecked(&checkpoint.body())
    }

    /// Signs arbitrary note text, which must end with a newline and contain no other control
    /// characters.
    pub fn sign_text(&self, text: &str) -> Result<String, CheckpointError> {
        if !text.ends_with('\n') {
            return Err(CheckpointError::MalformedNote("note text does not end with a newline".to_string()));
        }
        check_note_text(text)?;
        Ok(self.sign_unchecked(text))
    }

    fn sign_unchecked(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + 64);
        blob.extend_from_slice(&self.key_id.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// Verifies notes signed by one known Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: u32,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// Reads a verifier key `<name>+<key id>+<base64(0x01 || public key)>`, checking that
    /// the key id matches the name and key.
    pub fn from_verifier_key(text: &str) -> Result<Self, CheckpointError> {
        let (name, stated, public) = parse_key_text(text.trim_end())?;
        let key = VerifyingKey::from_bytes(&public)
            .map_err(|_| CheckpointError::MalformedKey("not an Ed25519 public key".into()))?;
        let actual = key_id(name, &public);
        if actual != stated {
            return Err(CheckpointError::KeyIdMismatch { stated, actual });
        }
        Ok(Self { name: name.to_string(), key_id: actual, key })
    }

    /// The verifier key text this verifier was read from.
    pub fn verifier_key(&self) -> String {
        let mut data = Vec::with_capacity(33);
        data.push(ALG_ED25519);
        data.extend_from_slice(self.key.as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id, STANDARD.encode(data))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The signed-note key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// Checks a signed note and returns its text (the part before the blank line, with its
    /// final newline). Signatures by other keys are allowed and ignored, as signed-note
    /// intends for cosigners; at least one must be ours and every one of ours must verify.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, CheckpointError> {
        let malformed = |reason: &str| CheckpointError::MalformedNote(reason.to_string());
        check_note_text(note)?;
        // Signature lines never contain a blank line, so the last one ends the text.
        let split = note.rfind("\n\n").ok_or_else(|| malformed("no blank line before the signatures"))?;
        let text = &note[..split + 1];
        let signatures = note[split + 2..]
            .strip_suffix('\n')
            .ok_or_else(|| malformed("signature block does not end with a newline"))?;
        if signatures.is_empty() {
            return Err(malformed("no signature lines"));
        }

        let mut ours = false;
        for (count, line) in signatures.split('\n').enumerate() {
            if count >= MAX_SIGNATURES {
                return Err(malformed("too many signature lines"));
            }
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or_else(|| malformed("signature line does not start with an em dash"))?;
            let (name, blob_b64) = rest.split_once(' ').ok_or_else(|| malformed("signature line has no signature"))?;
            check_key_name(name).map_err(|_| malformed("signature line has an invalid key name"))?;
            let blob = STANDARD.decode(blob_b64).map_err(|_| malformed("signature is not standard base64"))?;
            let Some((id, signature)) = blob.split_first_chunk::<4>() else {
                return Err(malformed("signature is shorter than a key id"));
            };
            if signature.is_empty() {
                return Err(malformed("signature is empty"));
            }
            if name != self.name || u32::from_be_bytes(*id) != self.key_id {
                continue;
            }
            let bad = || CheckpointError::BadSignature { name: name.to_string() };
            let signature: [u8; 64] = signature.try_into().map_err(|_| bad())?;
            // verify_strict also refuses non-canonical and small-order encodings, so a valid
            // signature cannot be re-spelled into another valid one.
            self.key.verify_strict(text.as_bytes(), &Signature::from_bytes(&signature)).map_err(|_| bad())?;
            ours = true;
        }
        if !ours {
            return Err(CheckpointError::NoSignature { name: self.name.clone(), key_id: self.key_id });
        }
        Ok(text)
    }

    /// Checks a signed checkpoint and returns what it says.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        Checkpoint::from_body(self.open(note)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // The example key pair and signed note of Go's golang.org/x/mod/sumdb/note documentation.
    // Ed25519 signatures are deterministic, so we must reproduce the note byte for byte.
    const GO_SECRET: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                           then you don't know what your problem is.\n";
    const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    const NAME: &str = "factory.local/audit";

    fn signer(seed: u8) -> NoteSigner {
        NoteSigner::generate(NAME, [seed; 32]).unwrap()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint { origin: NAME.to_string(), size: 17, root: crate::merkle::leaf_hash(b"some root") }
    }

    #[test]
    fn go_note_package_known_answer() {
        let signer = NoteSigner::from_secret_key_text(GO_SECRET).unwrap();
        assert_eq!(signer.name(), "PeterNeumann");
        assert_eq!(signer.key_id(), 0xc74f20a3);
        assert_eq!(signer.verifier_key(), GO_VERIFIER);
        assert_eq!(signer.secret_key_text(), GO_SECRET);
        assert_eq!(signer.sign_text(GO_TEXT).unwrap(), GO_NOTE);

        let verifier = NoteVerifier::from_verifier_key(GO_VERIFIER).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert_eq!(verifier.open(GO_NOTE).unwrap(), GO_TEXT);
        assert!(verifier.open(&GO_NOTE.replace("cryptography", "cryptographY")).is_err());
        // Not a checkpoint body, so the checkpoint reading refuses it.
        assert!(matches!(verifier.verify(GO_NOTE), Err(CheckpointError::MalformedCheckpoint(_))));
    }

    #[test]
    fn key_id_computed_from_the_definition() {
        let seed = [42u8; 32];
        let signer = NoteSigner::generate(NAME, seed).unwrap();
        let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();

        let mut preimage = Vec::new();
        preimage.extend_from_slice(NAME.as_bytes());
        preimage.push(b'\n');
        preimage.push(0x01);
        preimage.extend_from_slice(&public);
        let digest = Sha256::digest(&preimage);
        let expected = (u32::from(digest[0]) << 24)
            | (u32::from(digest[1]) << 16)
            | (u32::from(digest[2]) << 8)
            | u32::from(digest[3]);
        assert_eq!(signer.key_id(), expected);

        let mut typed = vec![0x01];
        typed.extend_from_slice(&public);
        assert_eq!(signer.verifier_key(), format!("{NAME}+{}+{}", hex::encode(&digest[..4]), STANDARD.encode(&typed)));
        let mut typed_seed = vec![0x01];
        typed_seed.extend_from_slice(&seed);
        assert_eq!(
            signer.secret_key_text(),
            format!("PRIVATE+KEY+{NAME}+{}+{}", hex::encode(&digest[..4]), STANDARD.encode(&typed_seed))
        );
    }

    #[test]
    fn body_format() {
        let cp = Checkpoint { origin: NAME.to_string(), size: 3, root: [0u8; 32] };
        assert_eq!(cp.body(), "factory.local/audit\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
        assert_eq!(Checkpoint::from_body(&cp.body()).unwrap(), cp);
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let signer = signer(1);
        let cp = checkpoint();
        let note = signer.sign(&cp);
        assert!(note.starts_with(&format!("{}\n\u{2014} {NAME} ", cp.body())));
        assert!(note.ends_with('\n'));
        let verifier = NoteVerifier::from_verifier_key(&signer.verifier_key()).unwrap();
        assert_eq!(verifier.verify(&note).unwrap(), cp);

        let restored = NoteSigner::from_secret_key_text(&signer.secret_key_text()).unwrap();
        assert_eq!(restored.sign(&cp), note);
    }

    #[test]
    fn every_flipped_byte_fails() {
        let signer = signer(2);
        let verifier = signer.verifier();
        let note = signer.sign(&checkpoint());
        for i in 0..note.len() {
            let mut bytes = note.clone().into_bytes();
            bytes[i] ^= 0x01;
            if let Ok(tampered) = String::from_utf8(bytes) {
                assert!(verifier.verify(&tampered).is_err(), "flipped byte {i} accepted: {tampered:?}");
            }
        }
    }

    #[test]
    fn other_keys_do_not_count() {
        let ours = signer(3);
        let theirs = signer(4);
        let cp = checkpoint();
        let forged = theirs.sign(&cp);
        assert!(matches!(ours.verifier().verify(&forged), Err(CheckpointError::NoSignature { .. })));

        let renamed = NoteSigner::generate("someone.else/log", [3; 32]).unwrap();
        assert!(ours.verifier().verify(&renamed.sign(&cp)).is_err());

        // A cosigned note: both signature lines after one body. Each verifier finds its own.
        let theirs_line = forged.rsplit_once("\n\n").unwrap().1;
        let cosigned = format!("{}{theirs_line}", ours.sign(&cp));
        assert_eq!(ours.verifier().verify(&cosigned).unwrap(), cp);
        assert_eq!(theirs.verifier().verify(&cosigned).unwrap(), cp);

        // A line with our name and key id but someone else's signature.
        let their_blob = STANDARD.decode(theirs_line.rsplit_once(' ').unwrap().1.trim_end()).unwrap();
        let mut swapped = ours.key_id().to_be_bytes().to_vec();
        swapped.extend_from_slice(&their_blob[4..]);
        let impostor = format!("{}\n\u{2014} {NAME} {}\n", cp.body(), STANDARD.encode(swapped));
        assert_eq!(ours.verifier().verify(&impostor), Err(CheckpointError::BadSignature { name: NAME.to_string() }));
    }

    #[test]
    fn checkpoint_bodies_are_parsed_strictly() {
        let signer = signer(5);
        let verifier = signer.verifier();
        let root = STANDARD.encode([7u8; 32]);
        let good = [
            format!("{NAME}\n0\n{root}\n"),
            format!("{NAME}\n18446744073709551615\n{root}\n"),
            format!("{NAME}\n5\n{root}\nextension line\nanother\n"),
        ];
        for body in &good {
            let note = signer.sign_text(body).unwrap();
            verifier.verify(&note).unwrap();
        }
        let bad = [
            format!("\n5\n{root}\n"),
            format!("{NAME}\n05\n{root}\n"),
            format!("{NAME}\n+5\n{root}\n"),
            format!("{NAME}\n-5\n{root}\n"),
            format!("{NAME}\n 5\n{root}\n"),
            format!("{NAME}\n\n{root}\n"),
            format!("{NAME}\n18446744073709551616\n{root}\n"),
            format!("{NAME}\n5\n{}\n", STANDARD.encode([7u8; 31])),
            format!("{NAME}\n5\n{}\n", STANDARD.encode([7u8; 33])),
            format!("{NAME}\n5\n{}\n", root.trim_end_matches('=')),
            format!("{NAME}\n5\n{}\n", hex::encode([7u8; 32])),
            format!("{NAME}\n5\n"),
            format!("{NAME}\n5\n{root}\n\nafter a blank line\n"),
        ];
        for body in &bad {
            let note = signer.sign_text(body).unwrap();
            assert!(verifier.verify(&note).is_err(), "accepted {body:?}");
        }
    }

    #[test]
    fn malformed_notes_are_refused() {
        let signer = signer(6);
        let verifier = signer.verifier();
        let note = signer.sign(&checkpoint());
        let (body, line) = note.rsplit_once("\n\n").unwrap();
        let cases = [
            format!("{body}\n"),
            format!("{body}\n\n"),
            format!("{body}\n\n{}", line.trim_end()),
            format!("{body}\n\n{}", line.replacen('\u{2014}', "-", 1)),
            format!("{body}\r\n\n{line}"),
            format!("{body}\n\n{line}garbage\n"),
            format!("{body}\n\n{}", "\u{2014} x AAAA\n"),
        ];
        for case in &cases {
            assert!(verifier.verify(case).is_err(), "accepted {case:?}");
        }
        let many = format!("{body}\n\n{}", line.repeat(MAX_SIGNATURES + 1));
        assert!(matches!(verifier.verify(&many), Err(CheckpointError::MalformedNote(_))));
        assert!(signer.sign_text("no newline").is_err());
        assert!(signer.sign_text("bell \u{7}\n").is_err());
    }

    #[test]
    fn malformed_keys_are_refused() {
        for name in ["", "has space", "has+plus", "tab\tname", "new\nline"] {
            assert_eq!(
                NoteSigner::generate(name, [0; 32]).unwrap_err(),
                CheckpointError::InvalidKeyName(name.to_string())
            );
        }
        let key = signer(7).verifier_key();
        let (name, rest) = key.split_once('+').unwrap();
        let (id, data) = rest.split_once('+').unwrap();
        let wrong_id = format!("{name}+{:08x}+{data}", u32::from_str_radix(id, 16).unwrap() ^ 1);
        assert!(matches!(NoteVerifier::from_verifier_key(&wrong_id), Err(CheckpointError::KeyIdMismatch { .. })));
        let mut bytes = STANDARD.decode(data).unwrap();
        bytes[0] = 0x02;
        let wrong_type = format!("{name}+{id}+{}", STANDARD.encode(&bytes));
        let short = format!("{name}+{id}+{}", STANDARD.encode(&bytes[..32]));
        for text in [
            wrong_type.as_str(),
            short.as_str(),
            &key[..key.len() - 4],
            "name+1234567+AQ==",
            "name+123456789+AQ==",
            "name+c74f20a3",
            "name",
            &format!("other{key}"),
        ] {
            assert!(NoteVerifier::from_verifier_key(text).is_err(), "accepted {text}");
        }
        assert!(NoteSigner::from_secret_key_text(&key).is_err());
        let secret = signer(7).secret_key_text();
        let other_name = secret.replacen(NAME, "factory.local/other", 1);
        assert!(matches!(NoteSigner::from_secret_key_text(&other_name), Err(CheckpointError::KeyIdMismatch { .. })));
    }

    #[test]
    fn published_files_carry_the_note_and_agree_with_it() {
        let signer = signer(9);
        let cp = checkpoint();
        let note = signer.sign(&cp);
        let published = PublishedCheckpoint::new(&cp, &note, "2025-01-01T00:00:00Z");
        let text = published.to_json();
        assert!(text.ends_with("}\n"));
        assert_eq!(PublishedCheckpoint::note_in_file(&text).unwrap(), note);
        // A bare note is taken as it is.
        assert_eq!(PublishedCheckpoint::note_in_file(&note).unwrap(), note);
        // Fields that disagree with the note are refused.
        for altered in [
            PublishedCheckpoint { size: 18, ..published.clone() },
            PublishedCheckpoint { origin: "other/log".to_string(), ..published.clone() },
            PublishedCheckpoint { root: STANDARD.encode([1u8; 32]), ..published.clone() },
        ] {
            assert!(PublishedCheckpoint::note_in_file(&altered.to_json()).is_err());
        }
        assert!(PublishedCheckpoint::note_in_file("{\"size\": 3}").is_err());

        let name = PublishedCheckpoint::file_name(17);
        assert_eq!(name, "checkpoint-00000000000000000017.json");
        assert_eq!(PublishedCheckpoint::size_in_file_name(&name), Some(17));
        assert!(PublishedCheckpoint::file_name(9) < PublishedCheckpoint::file_name(10));
        for other in
            ["checkpoint-17.json", "checkpoint-0000000000000000001x.json", ".checkpoint-00000000000000000017.json.tmp"]
        {
            assert_eq!(PublishedCheckpoint::size_in_file_name(other), None, "{other}");
        }
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let signer = signer(8);
        let shown = format!("{signer:?}");
        let secret = signer.secret_key_text();
        let seed_b64 = secret.rsplit_once('+').unwrap().1;
        assert!(!shown.contains(seed_b64));
        assert!(shown.contains(NAME));
    }
}
