//! Who sent an upstream message, told to the backend as gRPC metadata on every `OnReceive` and
//! `BatchOnReceive` call — the messages stay as the original gateway defined them, so existing
//! backends keep working and new ones read the headers:
//!
//! | metadata | value |
//! |---|---|
//! | `x-wsgw-user-id` | the sender's user id (from its token) |
//! | `x-wsgw-biz-id` | its business id |
//! | `x-wsgw-conn-id` | the connection's id on its node (as in `wsgw sessions`) |
//! | `x-wsgw-node-id` | the node that holds the connection |
//! | `x-wsgw-client-addr` | the client's address as the node saw it (`ip:port`) |
//!
//! On `BatchOnReceive` each header carries one value per request, comma-separated, in the order
//! of `reqs` (`x-wsgw-node-id` once: a batch comes from one node).

use std::{
    fmt::{self, Write},
    net::SocketAddr,
};

use tonic::{Request, metadata::AsciiMetadataValue};

use crate::auth::Identity;

/// The sender of one upstream message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sender {
    pub identity: Identity,
    pub conn: u64,
    pub remote: SocketAddr,
}

pub const USER_ID: &str = "x-wsgw-user-id";
pub const BIZ_ID: &str = "x-wsgw-biz-id";
pub const CONN_ID: &str = "x-wsgw-conn-id";
pub const NODE_ID: &str = "x-wsgw-node-id";
pub const CLIENT_ADDR: &str = "x-wsgw-client-addr";

/// `msg` as a request carrying its senders (one for `OnReceive`, one per request of a batch)
/// and the node's header ([`node_header`], made once per node).
pub(super) fn with_senders<T>(
    msg: T,
    senders: &[Sender],
    node: Option<&AsciiMetadataValue>,
) -> Request<T> {
    let mut request = Request::new(msg);
    let metadata = request.metadata_mut();
    let mut insert = |name, each: fn(&mut String, &Sender) -> fmt::Result| {
        let mut list = String::new();
        for (i, sender) in senders.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            // Writing into a String cannot fail.
            let _ = each(&mut list, sender);
        }
        // Numbers and addresses are always valid header values.
        if let Ok(value) = AsciiMetadataValue::try_from(list) {
            metadata.insert(name, value);
        }
    };
    insert(USER_ID, |out, s| write!(out, "{}", s.identity.user_id));
    insert(BIZ_ID, |out, s| write!(out, "{}", s.identity.biz_id));
    insert(CONN_ID, |out, s| write!(out, "{}", s.conn));
    insert(CLIENT_ADDR, |out, s| write!(out, "{}", s.remote));
    if let Some(node) = node {
        metadata.insert(NODE_ID, node.clone());
    }
    request
}

/// The `x-wsgw-node-id` value for `node_id`, or `None` (left out) when it is not printable ASCII.
pub(super) fn node_header(node_id: &str) -> Option<AsciiMetadataValue> {
    if !node_id.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    AsciiMetadataValue::try_from(node_id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_request_in_order_and_single_senders_alike() {
        let s = |user, conn, port| Sender {
            identity: Identity { biz_id: 9, user_id: user },
            conn,
            remote: SocketAddr::from(([10, 0, 0, 1], port)),
        };
        let r = with_senders((), &[s(1, 11, 5000), s(2, 12, 5001)], node_header("n1").as_ref());
        let get = |name| r.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        assert_eq!(get(USER_ID), "1,2");
        assert_eq!(get(BIZ_ID), "9,9");
        assert_eq!(get(CONN_ID), "11,12");
        assert_eq!(get(CLIENT_ADDR), "10.0.0.1:5000,10.0.0.1:5001");
        assert_eq!(get(NODE_ID), "n1");
        let odd = with_senders((), &[s(-7, 11, 5000)], node_header("nœud").as_ref());
        assert!(odd.metadata().get(NODE_ID).is_none(), "not ASCII: left out");
        let get = |name| odd.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        assert_eq!(get(USER_ID), "-7", "one sender: its values, no commas");
        assert_eq!(get(BIZ_ID), "9");
        assert_eq!(get(CONN_ID), "11");
        assert_eq!(get(CLIENT_ADDR), "10.0.0.1:5000");
    }
}
