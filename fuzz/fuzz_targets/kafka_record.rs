//! Any record on the push topic: parsing never panics (undecodable records are counted and
//! skipped by the consumer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgw::cluster::KafkaPush;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<KafkaPush>(data);
});
