//! The test harness: `TestNode::builder()…spawn()` and a WebSocket test client.

mod backend;
mod client;
mod node;

pub use backend::{Behaviour, TestBackend, dead_addr};
pub use client::{Client, code};
pub use node::{SECRET, TestNode};

/// Asserts that `cond` becomes true within a few seconds (polling).
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
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
