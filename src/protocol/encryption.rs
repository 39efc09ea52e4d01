//! Body encryption, byte compatible with the original gateway (SPEC §3): body = 12-byte random
//! nonce ‖ ciphertext ‖ 16-byte tag, no associated data, key = the configured string's UTF-8
//! bytes; an empty body stays empty. Keys come from config or the environment only.

use aes_gcm::{
    Aes128Gcm, Aes256Gcm, AesGcm,
    aead::{Aead, KeyInit, consts::U12},
    aes::Aes192,
};
use bytes::{BufMut, Bytes, BytesMut};
use chacha20poly1305::ChaCha20Poly1305;

use serde::{Deserialize, Serialize};

/// The body encryption algorithm (`protocol.encryption.algorithm`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptionAlgorithm {
    #[default]
    None,
    AesGcm,
    #[serde(rename = "chacha20-poly1305")]
    ChaCha20Poly1305,
}

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

type Aes192Gcm = AesGcm<Aes192, U12>;

/// Why a body could not be encrypted or decrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    #[error("invalid key length {0} for the algorithm")]
    KeyLength(usize),
    #[error("body too short to be encrypted ({0} bytes)")]
    TooShort(usize),
    #[error("body does not decrypt with the configured key")]
    Authentication,
}

/// The configured body cipher.
pub enum BodyCipher {
    Aes128(Box<Aes128Gcm>),
    Aes192(Box<Aes192Gcm>),
    Aes256(Box<Aes256Gcm>),
    ChaCha(Box<ChaCha20Poly1305>),
}

impl BodyCipher {
    /// The cipher for `algorithm` with the raw `key`, or `None` when encryption is off.
    pub fn new(algorithm: EncryptionAlgorithm, key: &[u8]) -> Result<Option<Self>, CipherError> {
        let bad = |_| CipherError::KeyLength(key.len());
        Ok(Some(match (algorithm, key.len()) {
            (EncryptionAlgorithm::None, _) => return Ok(None),
            (EncryptionAlgorithm::AesGcm, 16) => {
                Self::Aes128(Box::new(Aes128Gcm::new_from_slice(key).map_err(bad)?))
            }
            (EncryptionAlgorithm::AesGcm, 24) => {
                Self::Aes192(Box::new(Aes192Gcm::new_from_slice(key).map_err(bad)?))
            }
            (EncryptionAlgorithm::AesGcm, 32) => {
                Self::Aes256(Box::new(Aes256Gcm::new_from_slice(key).map_err(bad)?))
            }
            (EncryptionAlgorithm::ChaCha20Poly1305, 32) => {
                Self::ChaCha(Box::new(ChaCha20Poly1305::new_from_slice(key).map_err(bad)?))
            }
            (_, n) => return Err(CipherError::KeyLength(n)),
        }))
    }

    /// Encrypts with a fresh random nonce.
    pub fn seal(&self, plaintext: &[u8]) -> Bytes {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        self.seal_with_nonce(&nonce, plaintext)
    }

    /// Encrypts with the given nonce (tests and vectors; never reuse a nonce with one key).
    pub fn seal_with_nonce(&self, nonce: &[u8; NONCE_LEN], plaintext: &[u8]) -> Bytes {
        if plaintext.is_empty() {
            return Bytes::new();
        }
        let n = nonce.into();
        // Encryption fails only for plaintexts beyond the AEAD's limit (~64 GiB).
        let sealed = match self {
            Self::Aes128(c) => c.encrypt(n, plaintext),
            Self::Aes192(c) => c.encrypt(n, plaintext),
            Self::Aes256(c) => c.encrypt(n, plaintext),
            Self::ChaCha(c) => c.encrypt(n, plaintext),
        }
        .unwrap_or_default();
        let mut body = BytesMut::with_capacity(NONCE_LEN + sealed.len());
        body.put_slice(nonce);
        body.put_slice(&sealed);
        body.freeze()
    }

    /// Decrypts a body; an empty body stays empty.
    pub fn open(&self, body: &[u8]) -> Result<Bytes, CipherError> {
        if body.is_empty() {
            return Ok(Bytes::new());
        }
        if body.len() < NONCE_LEN + TAG_LEN {
            return Err(CipherError::TooShort(body.len()));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let n = nonce.try_into().map_err(|_| CipherError::TooShort(body.len()))?;
        match self {
            Self::Aes128(c) => c.decrypt(n, sealed),
            Self::Aes192(c) => c.decrypt(n, sealed),
            Self::Aes256(c) => c.decrypt(n, sealed),
            Self::ChaCha(c) => c.decrypt(n, sealed),
        }
        .map(Bytes::from)
        .map_err(|_| CipherError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    //! Vectors from `vectors/encryption.json` (OpenSSL through Python's `cryptography`).

    use super::*;
    use serde_json::Value;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn cipher(algorithm: &str, key: &str) -> BodyCipher {
        let algorithm = match algorithm {
            "aes-gcm" => EncryptionAlgorithm::AesGcm,
            "chacha20-poly1305" => EncryptionAlgorithm::ChaCha20Poly1305,
            other => panic!("unknown algorithm {other}"),
        };
        BodyCipher::new(algorithm, key.as_bytes()).expect("valid key").expect("enabled")
    }

    #[test]
    fn vectors_decrypt_and_encrypt_byte_for_byte() {
        let v: Value = serde_json::from_str(include_str!("../../tests/fixtures/encryption.json"))
            .expect("json");
        let vectors = v["vectors"].as_array().expect("vectors");
        assert_eq!(vectors.len(), 5);
        for t in vectors {
            let c =
                cipher(t["algorithm"].as_str().expect("alg"), t["key_utf8"].as_str().expect("key"));
            let nonce: [u8; 12] =
                hex(t["nonce_hex"].as_str().expect("nonce")).try_into().expect("12");
            let plain = hex(t["plaintext_hex"].as_str().expect("plain"));
            let body = hex(t["body_hex"].as_str().expect("body"));
            assert_eq!(c.open(&body).expect("decrypts").as_ref(), plain.as_slice());
            assert_eq!(c.seal_with_nonce(&nonce, &plain).as_ref(), body.as_slice());
        }
    }

    #[test]
    fn fresh_nonces_empty_bodies_and_bad_input() {
        let c = cipher("aes-gcm", "0123456789abcdef");
        let (a, b) = (c.seal(b"hello"), c.seal(b"hello"));
        assert_ne!(a, b, "a fresh nonce each time");
        assert_eq!(c.open(&a).expect("round trip").as_ref(), b"hello");
        assert!(c.seal(b"").is_empty());
        assert!(c.open(b"").expect("empty").is_empty());
        assert_eq!(c.open(b"short"), Err(CipherError::TooShort(5)));
        let mut tampered = a.to_vec();
        tampered[14] ^= 1;
        assert_eq!(c.open(&tampered), Err(CipherError::Authentication));
        let other = cipher("aes-gcm", "fedcba9876543210");
        assert_eq!(other.open(&a), Err(CipherError::Authentication));
    }

    #[test]
    fn wrong_key_lengths_are_refused() {
        let cipher = BodyCipher::new(EncryptionAlgorithm::ChaCha20Poly1305, b"short");
        assert_eq!(cipher.err(), Some(CipherError::KeyLength(5)));
    }
}
