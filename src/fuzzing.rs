//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off in every normal build):
//! thin wrappers that hand untrusted bytes to parsers that are private to their modules.
//! Owns nothing; must never be used by the gateway itself.

/// Redis script replies: `data` split at NUL bytes into the reply's strings.
pub fn redis_replies(data: &[u8]) {
    let parts = data.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    crate::cluster::directory::fuzz_replies(parts);
}

/// A Grafana webhook body (after authentication), with `label` as `--label`.
pub fn webhook(body: &[u8], label: &str) {
    crate::admin::webhook::fuzz_payload(body, label);
}
