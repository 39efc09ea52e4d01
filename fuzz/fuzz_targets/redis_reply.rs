//! Any reply of the directory's Redis scripts (strings split at NUL bytes): the claim, store,
//! route and inbox parsers, session index entries and node entries never panic (a garbled reply
//! from a broken or hostile Redis costs a push's route, never the node).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wsgw::fuzzing::redis_replies(data);
});
