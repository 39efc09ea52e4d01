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

use std::net::SocketAddr;

use tonic::{
    Request,
    metadata::{MetadataMap, MetadataValue},
};

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

/// `msg` as a request carrying its senders (one for `OnReceive`, one per request of a batch).
pub(super) fn with_senders<T>(msg: T, senders: &[Sender], node_id: &str) -> Request<T> {
    let mut request = Request::new(msg);
    let metadata = request.metadata_mut();
    if let [one] = senders {
        // The common case, without building lists: integers are written straight into the
        // header values.
        metadata.insert(USER_ID, one.identity.user_id.into());
        metadata.insert(BIZ_ID, one.identity.biz_id.into());
        metadata.insert(CONN_ID, one.conn.into());
        insert_ascii(metadata, CLIENT_ADDR, one.remote.to_string());
    } else {
        let list = |f: fn(&Sender) -> String| senders.iter().map(f).collect::<Vec<_>>().join(",");
        insert_ascii(metadata, USER_ID, list(|s| s.identity.user_id.to_string()));
        insert_ascii(metadata, BIZ_ID, list(|s| s.identity.biz_id.to_string()));
        insert_ascii(metadata, CONN_ID, list(|s| s.conn.to_string()));
        insert_ascii(metadata, CLIENT_ADDR, list(|s| s.remote.to_string()));
    }
    insert_ascii(metadata, NODE_ID, node_id.to_owned());
    request
}

/// Numbers and addresses are always printable ASCII; a node id that is not is left out.
fn insert_ascii(metadata: &mut MetadataMap, name: &'static str, value: String) {
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return;
    }
    if let Ok(value) = MetadataValue::try_from(value) {
        metadata.insert(name, value);
    }
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
        let r = with_senders((), &[s(1, 11, 5000), s(2, 12, 5001)], "n1");
        let get = |name| r.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        assert_eq!(get(USER_ID), "1,2");
        assert_eq!(get(BIZ_ID), "9,9");
        assert_eq!(get(CONN_ID), "11,12");
        assert_eq!(get(CLIENT_ADDR), "10.0.0.1:5000,10.0.0.1:5001");
        assert_eq!(get(NODE_ID), "n1");
        let odd = with_senders((), &[s(-7, 11, 5000)], "nœud");
        assert!(odd.metadata().get(NODE_ID).is_none(), "not ASCII: left out");
        let get = |name| odd.metadata().get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
        assert_eq!(get(USER_ID), "-7", "one sender: the same values, without lists");
        assert_eq!(get(BIZ_ID), "9");
        assert_eq!(get(CONN_ID), "11");
        assert_eq!(get(CLIENT_ADDR), "10.0.0.1:5000");
    }
}
