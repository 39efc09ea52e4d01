//! Any handshake token: verification never panics, and only a token signed with the secret
//! (impossible for the fuzzer to forge) could be accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgw::{auth::TokenVerifier, config::JwtConfig};

const SECRET: &[u8] = b"fuzz-secret-0123456789abcdef0123456789";

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let verifier = TokenVerifier::new(&JwtConfig::default(), SECRET).expect("secret");
    assert!(verifier.verify(token).is_err(), "a forged token was accepted: {token:?}");
    let _ = wsgw::auth::strip_bearer(token);
});
