//! Any bytes a client sends, through both serializers: decoding never panics, and whatever
//! decodes re-encodes to something that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsgw::protocol::{Message, Serializer};

fuzz_target!(|data: &[u8]| {
    for s in [Serializer::Json, Serializer::Proto] {
        if let Ok(msg) = s.decode::<Message>(data) {
            let again: Message = s.decode(&s.encode(&msg)).expect("our own encoding decodes");
            assert_eq!(again, msg, "{s:?} round trip");
        }
    }
});
