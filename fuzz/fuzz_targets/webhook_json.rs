//! Any body posted to `wsgw alert-webhook` by an authenticated caller: parsing the Grafana
//! payload and matching its alerts' labels to registered nodes never panics. The first byte
//! picks the `--label` setting.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else { return };
    let label = ["", "node", "host", "instance"][usize::from(pick % 4)];
    wsgw::fuzzing::webhook(body, label);
});
