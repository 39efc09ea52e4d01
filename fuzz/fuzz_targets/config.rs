//! Any config file, and any `WSGW_*` overrides: loading never panics; it returns a config or
//! the list of problems. Input: YAML text, then after a NUL byte `KEY=VALUE` lines that become
//! `WSGW_KEY=VALUE` variables.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (yaml, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let path = std::env::temp_dir().join(format!("wsgw-fuzz-config-{}.yaml", std::process::id()));
    std::fs::write(&path, yaml).expect("temp file");
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("WSGW_{k}"), v.to_owned()))
        .collect();
    let _ = wsgw::config::load(Some(&path), env);
});
