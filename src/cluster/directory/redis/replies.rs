//! What the directory sends to Redis and what Redis answers, as pure functions: the key names
//! ([`Keys`]), the writer's batch of CONNECT / DISCONNECT / ACK scripts ([`build`]) and the
//! meaning of the scripts' replies ([`interpret`], [`parse_route`], [`parse_inbox`],
//! [`parse_claim`]). No I/O here; the tests below need no Redis.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;

use redis::Cmd;

use super::{
    super::{DirectoryEvent, Inbox, UpstreamClaim},
    conn::Batch,
    scripts,
};
use crate::{auth::Identity, links::Link};

/// A change the writer makes: a link's arrival or departure (the flag says whether it was the
/// user's first (up) or last (down) connection on this node), or a push the user acknowledged.
pub(super) enum Update {
    Up(Arc<Link>, bool),
    Down(Arc<Link>, bool),
    Acked(Identity, String),
}

/// The directory's key names (see the table above) as seen from one node.
pub(super) struct Keys {
    pub(super) prefix: String,
    pub(super) node: String,
}

impl Keys {
    pub(super) fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.prefix, parts)
    }

    pub(super) fn upstream(&self, id: Identity, key: &str) -> String {
        self.key(format_args!("up:{{{}:{}}}:{key}", id.biz_id, id.user_id))
    }

    /// The user's hash; `user` is `biz:user`, as the `users:` sets hold it.
    pub(super) fn user_of(&self, user: &str) -> String {
        self.key(format_args!("user:{{{user}}}"))
    }

    pub(super) fn user(&self, id: Identity) -> String {
        self.user_of(&format!("{}:{}", id.biz_id, id.user_id))
    }

    /// The three keys of the user's inbox (one hash tag): pushes, their order, sizes.
    pub(super) fn inbox(&self, id: Identity) -> [String; 3] {
        let (b, u) = (id.biz_id, id.user_id);
        [
            self.key(format_args!("inbox:{{{b}:{u}}}")),
            self.key(format_args!("inbox-order:{{{b}:{u}}}")),
            self.key(format_args!("inbox-meta:{{{b}:{u}}}")),
        ]
    }

    /// The set of every node id that registered.
    pub(super) fn nodes(&self) -> String {
        self.key(format_args!("nodes"))
    }

    pub(super) fn node(&self, node: &str) -> String {
        self.key(format_args!("node:{node}"))
    }

    pub(super) fn conns(&self, node: &str) -> String {
        self.key(format_args!("conns:{node}"))
    }

    pub(super) fn users(&self, node: &str) -> String {
        self.key(format_args!("users:{node}"))
    }

    /// A connection's field in its user's hash.
    pub(super) fn field(&self, link: &Link) -> String {
        format!("{}|{}", self.node, link.id)
    }
}

/// The CLAIM script's reply.
pub(super) fn parse_claim(value: Vec<u8>) -> UpstreamClaim {
    match value.split_first() {
        None => UpstreamClaim::Owned,
        Some((b'a', answer)) => UpstreamClaim::Answered(Bytes::copy_from_slice(answer)),
        Some(_) => UpstreamClaim::InFlight,
    }
}

/// One batch for `batch`: the node's own table entries of the new connections, then per update
/// in order one CONNECT / DISCONNECT / ACK script (touching only its user's slot; their replies
/// are what [`interpret`] reads), then the removal of the departed connections' table entries.
/// So a crash in between leaves, at most, table entries without the user's field, which the
/// sweep of a dead node still finds and removes, never a field the sweep cannot find. A user who
/// leaves and comes back within the batch stays in the node's `users:` set.
pub(super) fn build(keys: &Keys, batch: &[Update], inbox_ttl_ms: u64) -> Batch {
    let mut out = Batch::new();
    let (conns, users) = (keys.conns(&keys.node), keys.users(&keys.node));
    let user = |id: Identity| format!("{}:{}", id.biz_id, id.user_id);
    for u in batch {
        if let Update::Up(link, _) = u {
            let since = millis(link.connected_at);
            out.add(Cmd::hset(&conns, link.id, conn_value(link, since))).ignore();
            out.add(Cmd::sadd(&users, user(link.identity))).ignore();
        }
    }
    out.barrier();
    for u in batch {
        match u {
            Update::Up(link, _) => out.script(
                scripts::CONNECT
                    .key(keys.user(link.identity))
                    .key(&keys.inbox(link.identity))
                    .arg(keys.field(link))
                    .arg(millis(link.connected_at))
                    .arg(inbox_ttl_ms),
            ),
            Update::Down(link, _) => {
                out.script(scripts::DISCONNECT.key(keys.user(link.identity)).arg(keys.field(link)))
            }
            Update::Acked(id, key) => out.script(scripts::ACK.key(&keys.inbox(*id)).arg(key)),
        };
    }
    out.barrier();
    for (i, u) in batch.iter().enumerate() {
        if let Update::Down(link, last) = u {
            out.add(Cmd::hdel(&conns, link.id)).ignore();
            let back = batch[i + 1..]
                .iter()
                .any(|l| matches!(l, Update::Up(l, _) if l.identity == link.identity));
            if *last && !back {
                out.add(Cmd::srem(&users, user(link.identity))).ignore();
            }
        }
    }
    out
}

/// What the inbox scripts dropped while recording or reading: pushed out by the bounds
/// (`inbox_max`, `inbox_max_bytes`) and expired (`inbox_ttl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Dropped {
    pub overflow: u64,
    pub expired: u64,
}

fn number(s: Option<&String>) -> u64 {
    s.and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// What the scripts' replies to `batch` mean, and how many inbox entries they found expired.
/// Each CONNECT / DISCONNECT reply starts with the user's connection count across the cluster
/// after the update; a CONNECT reply then has the expired count and the user's inbox (see
/// [`parse_inbox`]). `None`: the pipeline failed, and presence follows this node's own view.
pub(super) fn interpret(
    batch: impl IntoIterator<Item = Update>,
    replies: Option<Vec<Vec<String>>>,
) -> (Vec<DirectoryEvent>, u64) {
    let Some(replies) = replies else {
        let events = batch
            .into_iter()
            .filter_map(|u| match u {
                Update::Up(l, true) => Some(DirectoryEvent::Online(l.identity)),
                Update::Down(l, true) => Some(DirectoryEvent::Offline(l.identity)),
                _ => None,
            })
            .collect();
        return (events, 0);
    };
    let (mut events, mut expired) = (Vec::new(), 0);
    for (u, reply) in batch.into_iter().zip(replies) {
        let count = number(reply.first());
        match u {
            Update::Up(link, _) => {
                if count == 1 {
                    events.push(DirectoryEvent::Online(link.identity));
                }
                let (inbox, gone) = parse_inbox(link.identity, reply.into_iter().skip(1));
                expired += gone;
                if !inbox.pushes.is_empty() {
                    events.push(DirectoryEvent::Inbox(inbox));
                }
            }
            Update::Down(link, _) if count == 0 => {
                events.push(DirectoryEvent::Offline(link.identity));
            }
            Update::Down(..) | Update::Acked(..) => {}
        }
    }
    (events, expired)
}

/// An inbox as the READ part of a script returns it: `[expired, key, JSON, key, JSON, …]`,
/// oldest first. Returns the inbox and the expired count.
pub(super) fn parse_inbox(who: Identity, reply: impl IntoIterator<Item = String>) -> (Inbox, u64) {
    let mut reply = reply.into_iter();
    let expired = number(reply.next().as_ref());
    let rest: Vec<String> = reply.collect();
    (Inbox::read(who, rest), expired)
}

/// The ROUTE script's reply: `[dropped, expired, node id, …]`, the nodes with a field in the
/// user's hash (live or not: the caller's node table decides).
pub(super) fn parse_route(flat: Vec<String>) -> (Vec<String>, Dropped) {
    let dropped = parse_store(&flat);
    (flat.into_iter().skip(2).collect(), dropped)
}

/// A node's `node:` entry: its gRPC address (empty when the entry is unreadable).
pub(super) fn grpc_of(entry: &str) -> String {
    serde_json::from_str::<serde_json::Value>(entry)
        .ok()
        .and_then(|v| v.get("grpc")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The STORE script's reply (and the head of ROUTE's): `[dropped, expired]`.
pub(super) fn parse_store(flat: &[String]) -> Dropped {
    Dropped { overflow: number(flat.first()), expired: number(flat.get(1)) }
}

pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `biz:user`, as the `users:` sets hold them.
pub(super) fn parse_user(u: &str) -> Option<Identity> {
    let (biz, user) = u.split_once(':')?;
    Some(Identity { biz_id: biz.parse().ok()?, user_id: user.parse().ok()? })
}

pub(super) fn conn_value(link: &Link, since: u64) -> String {
    format!("{}:{}:{}:{}", link.identity.biz_id, link.identity.user_id, since, link.remote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{links::LinkRegistry, protocol::pb::PushMessage};

    fn who(biz_id: i64, user_id: i64) -> Identity {
        Identity { biz_id, user_id }
    }

    fn links() -> (Arc<LinkRegistry>, impl FnMut(Identity) -> Arc<Link>) {
        let registry = Arc::new(LinkRegistry::new(100));
        let reg = registry.clone();
        let addr = "127.0.0.1:1".parse().expect("addr");
        (registry, move |id| reg.insert(id, addr, 1024).0)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn push_json(key: &str) -> String {
        let msg = PushMessage { key: key.into(), biz_id: 9, receiver_id: 1, body: vec![1].into() };
        serde_json::to_string(&msg).expect("json")
    }

    fn acked(id: Identity, key: &str) -> Update {
        Update::Acked(id, key.into())
    }

    #[test]
    fn connect_and_disconnect_replies_become_presence_and_inbox_events() {
        let (_keep, mut link) = links();
        let (a, b) = (link(who(9, 1)), link(who(9, 2)));
        let batch = vec![
            Update::Up(a.clone(), true),
            Update::Up(b.clone(), true),
            acked(who(9, 2), "k0"),
            Update::Down(a.clone(), true),
            Update::Down(b.clone(), true),
        ];
        let replies = vec![
            // a: first connection cluster-wide, 3 expired, two pushes in the inbox (and a bad one).
            strings(&["1", "3", "k1", &push_json("k1"), "bad", "not json", "k2", &push_json("k2")]),
            // b: already connected elsewhere: no presence change; 1 expired, inbox empty.
            strings(&["2", "1"]),
            strings(&["1"]),
            // a leaves and nobody holds them any more; b leaves but another connection stays.
            strings(&["0"]),
            strings(&["1"]),
        ];
        let (events, expired) = interpret(batch, Some(replies));
        assert_eq!(expired, 4);
        let keys = |e: &DirectoryEvent| match e {
            DirectoryEvent::Inbox(i) => {
                i.pushes.iter().map(|p| p.msg.as_ref().map(|m| m.key.clone())).collect()
            }
            _ => Vec::new(),
        };
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], DirectoryEvent::Online(who(9, 1)));
        let want = [Some("k1".to_owned()), None, Some("k2".to_owned())];
        assert_eq!(
            keys(&events[1]),
            want,
            "oldest first; an unreadable entry is kept to be removed"
        );
        let DirectoryEvent::Inbox(inbox) = &events[1] else { unreachable!() };
        assert_eq!((inbox.who, inbox.pushes[1].key.as_str()), (who(9, 1), "bad"));
        assert_eq!(events[2], DirectoryEvent::Offline(who(9, 1)));
    }

    #[test]
    fn short_or_garbled_replies_never_panic() {
        let (_keep, mut link) = links();
        let a = link(who(9, 1));
        let batch = vec![Update::Up(a.clone(), false), Update::Down(a.clone(), false)];
        let (events, _) = interpret(batch, Some(vec![Vec::new()]));
        assert!(events.is_empty(), "an empty reply counts as 0 for an Up: {events:?}");
        let batch = vec![Update::Down(a.clone(), false)];
        let (events, _) = interpret(batch, Some(vec![strings(&["x"])]));
        assert_eq!(events, [DirectoryEvent::Offline(who(9, 1))]);
        // A dangling key (no JSON after it) is skipped; a non-number expired count is 0.
        let batch = vec![Update::Up(a.clone(), false)];
        let (events, expired) = interpret(batch, Some(vec![strings(&["2", "?", "k"])]));
        assert_eq!((events, expired), (Vec::new(), 0));
    }

    #[test]
    fn without_replies_presence_follows_this_nodes_view() {
        let (_keep, mut link) = links();
        let (a, b) = (link(who(9, 1)), link(who(9, 2)));
        let batch = vec![
            Update::Up(a.clone(), true),
            Update::Up(b.clone(), false),
            Update::Down(b.clone(), true),
        ];
        let (events, _) = interpret(batch, None);
        assert_eq!(events, [DirectoryEvent::Online(who(9, 1)), DirectoryEvent::Offline(who(9, 2))]);
    }

    #[test]
    fn claim_replies_say_who_answers() {
        assert_eq!(parse_claim(Vec::new()), UpstreamClaim::Owned);
        assert_eq!(parse_claim(b"c".to_vec()), UpstreamClaim::InFlight);
        assert_eq!(parse_claim(b"a".to_vec()), UpstreamClaim::Answered(Bytes::new()));
        let answer = parse_claim(b"a\x08\x07".to_vec());
        assert_eq!(answer, UpstreamClaim::Answered(Bytes::from_static(b"\x08\x07")));
        assert_eq!(
            parse_claim(b"?".to_vec()),
            UpstreamClaim::InFlight,
            "unknown: wait, then take over"
        );
    }

    #[test]
    fn users_of_the_sweep_index_parse_or_are_skipped() {
        assert_eq!(parse_user("9:42"), Some(who(9, 42)));
        for bad in ["", "9", "9:", ":42", "x:42", "9:42:1"] {
            assert_eq!(parse_user(bad), None, "{bad}");
        }
    }

    #[test]
    fn route_replies_name_the_users_nodes_and_what_was_dropped() {
        let none = Dropped::default();
        assert_eq!(parse_route(Vec::new()), (Vec::new(), none));
        let out = Dropped { overflow: 3, expired: 2 };
        assert_eq!(parse_route(strings(&["3", "2"])), (Vec::new(), out), "3 out, 2 expired");
        assert_eq!(parse_route(strings(&["x", ""])), (Vec::new(), none));
        assert_eq!(parse_route(strings(&["0", "1", "n1", "n2"])).0, strings(&["n1", "n2"]));
    }

    #[test]
    fn node_entries_give_their_grpc_address() {
        assert_eq!(grpc_of(r#"{"grpc":"10.0.0.1:9004","ws":"10.0.0.1:9002"}"#), "10.0.0.1:9004");
        assert_eq!(grpc_of("garbled"), "");
        assert_eq!(grpc_of("{}"), "");
    }

    #[test]
    fn the_pipeline_has_one_script_per_update_in_order() {
        let (_keep, mut link) = links();
        let a = link(who(9, 1));
        let keys = Keys { prefix: "p:".into(), node: "n1".into() };
        let batch =
            [Update::Up(a.clone(), true), Update::Down(a.clone(), true), acked(who(9, 1), "k")];
        let pipe = build(&keys, &batch, 60_000);
        let cmds: Vec<Vec<u8>> = pipe.commands().map(|c| c.get_packed_command()).collect();
        // The connect's HSET conns, SADD users; CONNECT, DISCONNECT, ACK; HDEL, SREM.
        assert_eq!(cmds.len(), 7);
        let text = |c: &[u8]| String::from_utf8_lossy(c).into_owned();
        let connect = text(&cmds[2]);
        assert!(connect.starts_with("*") && connect.contains("EVALSHA"), "by SHA, not by text");
        assert!(connect.contains(scripts::CONNECT.get_hash()));
        for key in ["p:user:{9:1}", "p:inbox:{9:1}", "p:inbox-order:{9:1}", "p:inbox-meta:{9:1}"] {
            assert!(connect.contains(key), "{key}: one hash tag per user");
        }
        assert!(!connect.contains("p:conns:n1"), "the node's tables are another slot");
        assert!(text(&cmds[0]).contains("p:conns:n1") && text(&cmds[1]).contains("p:users:n1"));
        assert!(text(&cmds[3]).contains(scripts::DISCONNECT.get_hash()));
        assert!(text(&cmds[3]).contains(&format!("n1|{}", a.id)), "the link's field");
        assert!(
            text(&cmds[4]).contains(scripts::ACK.get_hash()) && text(&cmds[4]).ends_with("k\r\n")
        );
        assert!(text(&cmds[5]).contains("HDEL"), "table entries go after the user's field");
        assert!(text(&cmds[6]).contains("SREM") && text(&cmds[6]).contains("9:1"));

        // Leaving and coming back within one batch: the user stays in the node's set.
        let b = link(who(9, 1));
        let batch = [Update::Down(a.clone(), true), Update::Up(b, true)];
        let pipe = build(&keys, &batch, 60_000);
        let cmds: Vec<String> = pipe.commands().map(|c| text(&c.get_packed_command())).collect();
        assert_eq!(cmds.len(), 5, "{cmds:?}");
        assert!(cmds[1].contains("SADD") && !cmds.iter().any(|c| c.contains("SREM")));
    }
}
