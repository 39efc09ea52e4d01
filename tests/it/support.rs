//! The test harness: `TestNode::builder()…spawn()` and a WebSocket test client.

mod backend;
mod client;
pub mod cluster;
mod node;

pub use backend::{Behaviour, TestBackend, dead_addr};
pub use client::{Client, code};
pub use node::{SECRET, TestNode};

/// Asserts that `cond` becomes true within a few seconds (polling).
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_within!(5, $cond, $($msg)+)
    };
}

/// Asserts that `cond` becomes true within `secs` seconds (polling).
#[macro_export]
macro_rules! assert_within {
    ($secs:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}
