//! Who is calling: the client address the per-address limits are keyed by.
//!
//! The address is the connection's peer, which the server provides through axum's
//! `ConnectInfo` (serve with `into_make_service_with_connect_info::<SocketAddr>()`;
//! without it every request counts as one unknown client). Behind a reverse proxy every
//! request comes from the proxy, so the per-address limits apply to the proxy as a
//! whole, unless its address is in `trusted-proxies`: then the client is the right-most
//! address of `X-Forwarded-For` that is not itself a trusted proxy. The header is never
//! read from any other peer (anyone can send it). IPv6 clients are keyed by their /64,
//! since one host usually holds a whole /64.
//!
//! A service's state says which proxies it trusts by implementing [`TrustedProxies`];
//! handlers then take a [`ClientAddr`] argument.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use ipnet::{IpNet, Ipv6Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A trusted proxy: one address (`10.0.0.7`) or a network (`10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet(IpNet);

impl ProxyNet {
    /// Whether `ip` is in it.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl FromStr for ProxyNet {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyNet, String> {
        let s = s.trim();
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map(ProxyNet)
            .map_err(|_| format!("`{s}` is neither an IP address nor a network like 10.0.0.0/8"))
    }
}

impl Serialize for ProxyNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ProxyNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ProxyNet, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The client's address, if the server told the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

/// What the per-address limits are keyed by (see [`ClientAddr::key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientAddr {
    /// The limits' key: the IPv4 address, or the IPv6 /64; all requests without a known
    /// peer share one key.
    pub fn key(self) -> ClientKey {
        ClientKey(match self.0 {
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(IpAddr::V4(v4)) => IpAddr::V4(v4),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => Ipv6Net::new(v6, 64).map_or(IpAddr::V6(v6), |n| IpAddr::V6(n.network())),
            },
        })
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The client of a request from `peer`: `peer` itself unless it is a trusted proxy, then
/// the right-most `X-Forwarded-For` hop that is not one (all of them trusted: the
/// left-most). A hop that is not an address ends the walk at the proxy before it.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[ProxyNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// A service state that knows which proxies may name the client in `X-Forwarded-For`.
pub trait TrustedProxies {
    /// The proxies (`trusted-proxies` in the service's config).
    fn trusted_proxies(&self) -> &[ProxyNet];
}

impl<S: TrustedProxies + Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ClientAddr, Infallible> {
        // The extractor, not the extension: it also takes a test's `MockConnectInfo`.
        let peer = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .ok()
            .map(|ConnectInfo(a)| a.ip());
        Ok(ClientAddr(peer.map(|p| {
            resolve(p, &parts.headers, state.trusted_proxies())
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().expect("header"));
        h
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_proxies() {
        let trusted: Vec<ProxyNet> = ["10.0.0.0/8", "192.168.1.1"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        let h = xff("6.6.6.6, 203.0.113.5, 10.0.0.2");
        // An untrusted peer: the header is ignored.
        assert_eq!(
            resolve(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        // Through two trusted proxies: the first untrusted hop from the right, not the
        // left-most (which the client made up).
        assert_eq!(resolve(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.5"));
        assert_eq!(
            resolve(ip("192.168.1.1"), &xff("2001:db8::1"), &trusted),
            ip("2001:db8::1")
        );
        // No header, or garbage right behind the proxy: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            resolve(ip("10.0.0.1"), &xff("1.2.3.4, junk"), &trusted),
            ip("10.0.0.1")
        );
        assert!("not-an-address".parse::<ProxyNet>().is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let a = ClientAddr(Some(ip("2001:db8:1:2:aaaa::1"))).key();
        let b = ClientAddr(Some(ip("2001:db8:1:2:bbbb::9"))).key();
        let c = ClientAddr(Some(ip("2001:db8:1:3::1"))).key();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientAddr(Some(ip("::ffff:192.0.2.1"))).key(),
            ClientAddr(Some(ip("192.0.2.1"))).key()
        );
        assert_eq!(ClientAddr(None).key(), ClientAddr(None).key());
    }
}
