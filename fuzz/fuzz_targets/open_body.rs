//! Any encrypted body (both AEADs): opening never panics, a tampered body never opens, and
//! sealing then opening returns the plaintext.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgw::protocol::{BodyCipher, EncryptionAlgorithm};

fuzz_target!(|data: &[u8]| {
    let key = [7u8; 32];
    for alg in [EncryptionAlgorithm::AesGcm, EncryptionAlgorithm::ChaCha20Poly1305] {
        let cipher = BodyCipher::new(alg, &key).expect("key").expect("on");
        let _ = cipher.open(data);
        let sealed = cipher.seal(data);
        assert_eq!(cipher.open(&sealed).expect("opens").as_ref(), data);
        if !data.is_empty() {
            let mut tampered = sealed.to_vec();
            let i = data[0] as usize % tampered.len();
            tampered[i] ^= 1;
            assert!(cipher.open(&tampered).is_err(), "a tampered body opened");
        }
    }
});
