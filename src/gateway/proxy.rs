//! The PROXY protocol (v1 text and v2 binary, parsed by `ppp`): a load balancer in front of
//! the node starts each connection with a header naming the client's address, which then
//! counts in the per-address limits, logs and `wsgw sessions`.
//!
//! Owns: reading exactly the header's bytes (never a byte of the WebSocket handshake after it)
//! and the address it names. Must never take a header from a peer that is not a trusted proxy:
//! anyone could then claim any address.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header (RFC: 107 bytes), and the longest v2 header read (its addresses and
/// a few TLVs; longer ones are refused).
const V1_MAX: usize = 107;
const V2_MAX: usize = 16 + 512;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a connection that had to start with a PROXY header is closed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("connection closed before the PROXY header")]
    Closed,
    #[error("not a PROXY protocol header")]
    Invalid,
    #[error("PROXY header too long")]
    TooLong,
}

/// Reads the PROXY header at the start of `stream` and returns the client address it names:
/// the source of a proxied TCP connection, or `peer` itself for a `LOCAL`/`UNKNOWN` header
/// (the proxy's own health checks).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyError> {
    let mut head = vec![0u8; 16];
    stream.read_exact(&mut head[..8]).await.map_err(|_| ProxyError::Closed)?;
    if head.starts_with(b"PROXY ") {
        head.truncate(8);
        while !head.ends_with(b"\r\n") {
            if head.len() >= V1_MAX {
                return Err(ProxyError::TooLong);
            }
            head.push(stream.read_u8().await.map_err(|_| ProxyError::Closed)?);
        }
        let header = ppp::v1::Header::try_from(&head[..]).map_err(|_| ProxyError::Invalid)?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => (IpAddr::V4(a.source_address), a.source_port).into(),
            ppp::v1::Addresses::Tcp6(a) => (IpAddr::V6(a.source_address), a.source_port).into(),
            ppp::v1::Addresses::Unknown => peer,
        });
    }
    if !V2_SIGNATURE.starts_with(&head[..8]) {
        return Err(ProxyError::Invalid);
    }
    stream.read_exact(&mut head[8..16]).await.map_err(|_| ProxyError::Closed)?;
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    if 16 + len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    head.resize(16 + len, 0);
    stream.read_exact(&mut head[16..]).await.map_err(|_| ProxyError::Closed)?;
    let header = ppp::v2::Header::try_from(&head[..]).map_err(|_| ProxyError::Invalid)?;
    if header.command == ppp::v2::Command::Local {
        return Ok(peer);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => (IpAddr::V4(a.source_address), a.source_port).into(),
        ppp::v2::Addresses::IPv6(a) => (IpAddr::V6(a.source_address), a.source_port).into(),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => peer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.2:5000".parse().expect("addr")
    }

    async fn read(bytes: &[u8]) -> (Result<SocketAddr, ProxyError>, Vec<u8>) {
        let mut input = bytes;
        let result = read_header(&mut input, peer()).await;
        (result, input.to_vec())
    }

    #[tokio::test]
    async fn v1_headers_name_the_client_and_leave_the_request_untouched() {
        let (addr, rest) =
            read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 9002\r\nGET / HTTP/1.1").await;
        assert_eq!(addr, Ok("203.0.113.7:51000".parse().expect("addr")));
        assert_eq!(rest, b"GET / HTTP/1.1");
        let (addr, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 9002\r\n").await;
        assert_eq!(addr, Ok("[2001:db8::1]:4000".parse().expect("addr")));
        assert_eq!(read(b"PROXY UNKNOWN\r\nGET").await, (Ok(peer()), b"GET".to_vec()));
    }

    #[tokio::test]
    async fn v2_headers_name_the_client_and_local_means_the_proxy_itself() {
        let addresses = ppp::v2::IPv4::new([198, 51, 100, 9], [10, 0, 0, 1], 40000, 9002);
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            addresses,
        )
        .build()
        .expect("header");
        let mut input = header.clone();
        input.extend_from_slice(b"GET");
        let (addr, rest) = read(&input).await;
        assert_eq!(addr, Ok("198.51.100.9:40000".parse().expect("addr")));
        assert_eq!(rest, b"GET");
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        )
        .build()
        .expect("header");
        assert_eq!(read(&local).await.0, Ok(peer()));
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        assert_eq!(read(b"GET / HTTP/1.1\r\n\r\n").await.0, Err(ProxyError::Invalid));
        assert_eq!(read(b"PROXY TCP4 nonsense\r\n").await.0, Err(ProxyError::Invalid));
        let endless = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(read(&endless).await.0, Err(ProxyError::TooLong));
        assert_eq!(read(b"PROX").await.0, Err(ProxyError::Closed));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(read(&huge).await.0, Err(ProxyError::TooLong));
    }
}
