//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that passes TCP through
//! writes the client's address in front of the connection's first byte.
//!
//! It is an opt-in per listener (`--proxy-protocol`, `proxy_protocol = true` in the gateway's
//! TOML), and only a trusted proxy ([`crate::trusted_proxy`]) may use it: a connection from any
//! other peer that starts with a PROXY signature is closed, so a client cannot name its own
//! address. A trusted peer may also connect without a header (a health check, say); it is then
//! the peer of an ordinary connection. `PROXY UNKNOWN` (v1) and `LOCAL` or non-TCP (v2)
//! headers name no client: the peer stands.
//!
//! The parser is strict: one header, at most 107 bytes for v1 (the specification's limit) and
//! [`MAX_V2_ADDRESS_BYTES`] of address block for v2; anything malformed closes the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt as _;

/// The v1 signature.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 specification's longest header, CRLF included.
const V1_MAX: usize = 107;
/// Longest v2 address block (with TLVs) accepted; the addresses need at most 216.
pub const MAX_V2_ADDRESS_BYTES: usize = 512;

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    /// A peer that is not a trusted proxy sent a PROXY header.
    #[error("a PROXY protocol header from a peer that is not a trusted proxy")]
    Untrusted,
    /// The header does not follow the specification.
    #[error("a malformed PROXY protocol header")]
    Malformed,
    /// The connection ended, or failed, before the header was complete.
    #[error("the connection ended inside a PROXY protocol header")]
    Incomplete,
}

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Too few bytes to tell.
    Undecided,
    /// Not a PROXY header: ordinary HTTP.
    Plain,
    /// A PROXY header: v1 or v2.
    V1,
    V2,
}

fn classify(bytes: &[u8]) -> Start {
    let matches = |signature: &[u8]| {
        let n = bytes.len().min(signature.len());
        bytes[..n] == signature[..n]
    };
    match (matches(V1_SIGNATURE), matches(V2_SIGNATURE)) {
        (true, _) if bytes.len() >= V1_SIGNATURE.len() => Start::V1,
        (_, true) if bytes.len() >= V2_SIGNATURE.len() => Start::V2,
        (false, false) => Start::Plain,
        _ => Start::Undecided,
    }
}

/// A complete header at the start of `bytes`: the client it names (if any) and its length.
/// `Ok(None)` means more bytes are needed.
fn parse(bytes: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyHeaderError> {
    match classify(bytes) {
        Start::Undecided => Ok(None),
        Start::Plain => Err(ProxyHeaderError::Malformed),
        Start::V1 => parse_v1(bytes),
        Start::V2 => parse_v2(bytes),
    }
}

fn parse_v1(bytes: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyHeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if bytes.len() >= V1_MAX {
            Err(ProxyHeaderError::Malformed)
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&bytes[V1_SIGNATURE.len()..end])
        .map_err(|_| ProxyHeaderError::Malformed)?;
    let length = end + 2;
    if line == "UNKNOWN" || line.starts_with("UNKNOWN ") {
        return Ok(Some((None, length)));
    }
    let fields: Vec<&str> = line.split(' ').collect();
    let [family, source, destination, source_port, destination_port] = fields[..] else {
        return Err(ProxyHeaderError::Malformed);
    };
    let source: IpAddr = match family {
        "TCP4" => IpAddr::V4(address(source)?),
        "TCP6" => IpAddr::V6(address(source)?),
        _ => return Err(ProxyHeaderError::Malformed),
    };
    if family == "TCP4" {
        let _: Ipv4Addr = address(destination)?;
    } else {
        let _: Ipv6Addr = address(destination)?;
    }
    let source_port = port(source_port)?;
    port(destination_port)?;
    Ok(Some((Some(SocketAddr::new(source, source_port)), length)))
}

fn address<T: std::str::FromStr>(text: &str) -> Result<T, ProxyHeaderError> {
    text.parse().map_err(|_| ProxyHeaderError::Malformed)
}

/// A decimal port without sign or leading zeros, as the v1 grammar has it.
fn port(text: &str) -> Result<u16, ProxyHeaderError> {
    let well_formed = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !well_formed {
        return Err(ProxyHeaderError::Malformed);
    }
    text.parse().map_err(|_| ProxyHeaderError::Malformed)
}

fn parse_v2(bytes: &[u8]) -> Result<Option<(Option<SocketAddr>, usize)>, ProxyHeaderError> {
    if bytes.len() < 16 {
        return Ok(None);
    }
    let (version_command, family) = (bytes[12], bytes[13]);
    let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if version_command >> 4 != 2 || length > MAX_V2_ADDRESS_BYTES {
        return Err(ProxyHeaderError::Malformed);
    }
    if bytes.len() < 16 + length {
        return Ok(None);
    }
    let block = &bytes[16..16 + length];
    let total = 16 + length;
    let source = match version_command & 0x0f {
        // LOCAL: the proxy's own connection (a health check); the peer stands.
        0x0 => None,
        0x1 => match family {
            // TCP over IPv4: source, destination, source port, destination port.
            0x11 => {
                let a: [u8; 12] = block
                    .get(..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProxyHeaderError::Malformed)?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(
                    IpAddr::V4(ip),
                    u16::from_be_bytes([a[8], a[9]]),
                ))
            }
            0x21 => {
                let a: [u8; 36] = block
                    .get(..36)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(ProxyHeaderError::Malformed)?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(ip)),
                    u16::from_be_bytes([a[32], a[33]]),
                ))
            }
            // UNSPEC, UDP or UNIX: no TCP client to name.
            0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
            _ => return Err(ProxyHeaderError::Malformed),
        },
        _ => return Err(ProxyHeaderError::Malformed),
    };
    Ok(Some((source, total)))
}

/// What the start of a connection held.
#[derive(Debug)]
pub struct Preamble {
    /// The client a trusted proxy named, if it sent a header that names one.
    pub source: Option<SocketAddr>,
    /// Bytes read past the header (the start of the first request), to be served first.
    pub rest: Vec<u8>,
}

/// Reads a connection's PROXY header, if it has one. `trusted` says whether the peer is a
/// trusted proxy; an untrusted peer's header is refused. The caller bounds the time.
pub async fn read_preamble<R: tokio::io::AsyncRead + Unpin>(
    stream: &mut R,
    trusted: bool,
) -> Result<Preamble, ProxyHeaderError> {
    let mut buffer = Vec::with_capacity(128);
    loop {
        let start = classify(&buffer);
        if start == Start::Plain {
            return Ok(Preamble {
                source: None,
                rest: buffer,
            });
        }
        if start != Start::Undecided {
            if !trusted {
                return Err(ProxyHeaderError::Untrusted);
            }
            if let Some((source, length)) = parse(&buffer)? {
                return Ok(Preamble {
                    source,
                    rest: buffer.split_off(length),
                });
            }
        }
        if buffer.len() >= 16 + MAX_V2_ADDRESS_BYTES {
            return Err(ProxyHeaderError::Malformed);
        }
        let mut chunk = [0u8; 256];
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ProxyHeaderError::Incomplete)?;
        if n == 0 {
            return if buffer.is_empty() {
                Ok(Preamble {
                    source: None,
                    rest: buffer,
                })
            } else {
                Err(ProxyHeaderError::Incomplete)
            };
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    async fn read(bytes: &[u8], trusted: bool) -> Result<Preamble, ProxyHeaderError> {
        let mut reader = bytes;
        read_preamble(&mut reader, trusted).await
    }

    #[tokio::test]
    async fn v1_names_the_client_and_keeps_the_request() {
        let p = read(
            b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n",
            true,
        )
        .await
        .unwrap();
        assert_eq!(p.source, Some("198.51.100.7:5555".parse().unwrap()));
        assert_eq!(p.rest, b"GET / HTTP/1.1\r\n");
        let p = read(b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 443\r\n", true)
            .await
            .unwrap();
        assert_eq!(p.source, Some("[2001:db8::7]:5555".parse().unwrap()));
        let p = read(b"PROXY UNKNOWN\r\nGET", true).await.unwrap();
        assert_eq!((p.source, p.rest.as_slice()), (None, &b"GET"[..]));
    }

    #[tokio::test]
    async fn v2_names_the_client() {
        let mut block = vec![198, 51, 100, 7, 10, 0, 0, 1];
        block.extend_from_slice(&5555u16.to_be_bytes());
        block.extend_from_slice(&80u16.to_be_bytes());
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // a TLV, skipped
        let mut bytes = v2(1, 0x11, &block);
        bytes.extend_from_slice(b"GET");
        let p = read(&bytes, true).await.unwrap();
        assert_eq!(p.source, Some("198.51.100.7:5555".parse().unwrap()));
        assert_eq!(p.rest, b"GET");
        let mut block6 = vec![0u8; 36];
        block6[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block6[32..34].copy_from_slice(&443u16.to_be_bytes());
        let p = read(&v2(1, 0x21, &block6), true).await.unwrap();
        assert_eq!(p.source, Some("[2001:db8::7]:443".parse().unwrap()));
        // LOCAL (a health check) names no one.
        assert_eq!(read(&v2(0, 0x11, &block), true).await.unwrap().source, None);
    }

    #[tokio::test]
    async fn plain_http_passes_untouched() {
        for trusted in [false, true] {
            let p = read(b"GET / HTTP/1.1\r\n", trusted).await.unwrap();
            assert_eq!(
                (p.source, p.rest.as_slice()),
                (None, &b"GET / HTTP/1.1\r\n"[..])
            );
        }
        // A method that starts like the signature is still plain HTTP once it differs.
        let p = read(b"PROXYX / HTTP/1.1\r\n", false).await.unwrap();
        assert_eq!(p.source, None);
    }

    #[tokio::test]
    async fn an_untrusted_peer_cannot_name_a_client() {
        assert_eq!(
            read(b"PROXY TCP4 1.2.3.4 10.0.0.1 1 80\r\n", false)
                .await
                .unwrap_err(),
            ProxyHeaderError::Untrusted
        );
        assert_eq!(
            read(&v2(1, 0x11, &[0; 12]), false).await.unwrap_err(),
            ProxyHeaderError::Untrusted
        );
    }

    #[tokio::test]
    async fn malformed_headers_are_refused() {
        let cases: &[&[u8]] = &[
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1 80\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 1\r\n",
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 80\r\n",
            b"PROXY TCP6 1.2.3.4 2001:db8::1 1 80\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 65536 80\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 01 80\r\n",
            b"PROXY TCP4 1.2.3.4 10.0.0.1 +1 80\r\n",
            b"PROXY TCP4  1.2.3.4 10.0.0.1 1 80\r\n",
            b"PROXY UDP4 1.2.3.4 10.0.0.1 1 80\r\n",
        ];
        for case in cases {
            assert!(
                read(case, true).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
        // Over 107 bytes without CRLF.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        assert_eq!(
            read(&long, true).await.unwrap_err(),
            ProxyHeaderError::Malformed
        );
        // v2: wrong version, short address block, an unknown family, an oversized block.
        let mut bad_version = v2(1, 0x11, &[0; 12]);
        bad_version[12] = 0x11;
        assert!(read(&bad_version, true).await.is_err());
        assert!(read(&v2(1, 0x11, &[0; 8]), true).await.is_err());
        assert!(read(&v2(1, 0x41, &[0; 12]), true).await.is_err());
        assert!(read(&v2(1, 0x11, &[0; 600]), true).await.is_err());
        assert!(read(&v2(2, 0x11, &[0; 12]), true).await.is_err());
        // Cut short.
        assert_eq!(
            read(b"PROXY TCP4 1.2.3.4", true).await.unwrap_err(),
            ProxyHeaderError::Incomplete
        );
        assert_eq!(
            read(&V2_SIGNATURE[..8], true).await.unwrap_err(),
            ProxyHeaderError::Incomplete
        );
    }
}
