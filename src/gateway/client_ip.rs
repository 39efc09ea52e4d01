//! The client's address as limits, logs and `wsgw sessions` see it: the TCP peer's, or — when
//! that peer is a trusted proxy (`server.websocket.trusted_proxies`) — the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy (entries left of it could be forged by
//! the client). Port 0 when the address comes from the header (proxies do not forward ports).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

/// `peer`, or the client a trusted proxy forwarded for.
pub(super) fn client_addr(
    peer: SocketAddr,
    forwarded: Option<&str>,
    trusted: &[IpNet],
) -> SocketAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    let Some(forwarded) = forwarded else { return peer };
    forwarded
        .rsplit(',')
        .map(str::trim)
        .map_while(|entry| entry.parse::<IpAddr>().ok())
        .find(|ip| !is_trusted(ip))
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_network;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|e| parse_network(e).expect("valid")).collect()
    }

    #[test]
    fn only_a_trusted_peer_may_name_the_client() {
        let lb: SocketAddr = "10.0.0.2:4000".parse().expect("addr");
        let client: SocketAddr = "198.51.100.7:5000".parse().expect("addr");
        let trusted = nets(&["10.0.0.0/8", "192.0.2.1"]);
        let header = Some("203.0.113.9, 198.51.100.20");
        assert_eq!(
            client_addr(client, header, &trusted),
            client,
            "untrusted peer: its own address"
        );
        assert_eq!(client_addr(lb, header, &trusted).to_string(), "198.51.100.20:0");
        let chain = Some("203.0.113.9, 198.51.100.20, 192.0.2.1");
        assert_eq!(client_addr(lb, chain, &trusted).to_string(), "198.51.100.20:0", "skip proxies");
        assert_eq!(client_addr(lb, None, &trusted), lb, "no header");
        assert_eq!(client_addr(lb, Some("garbage"), &trusted), lb, "unreadable header");
        assert_eq!(client_addr(lb, Some("10.1.1.1"), &trusted), lb, "only proxies listed");
        assert!(parse_network("not-an-ip").is_none());
    }
}
