//! The client's real address behind proxies: the trusted proxies (CIDR ranges), and the
//! address a trusted proxy wrote into `X-Forwarded-For` or `Forwarded` (RFC 7239).
//!
//! Proxies append the address they received a request from, so the chain is read from the
//! right: the right-most address that is not itself a trusted proxy is the client. Anything
//! further left was written by the client and is not believed.
//!
//! Imports nothing of the crate.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address range, e.g. `10.0.0.0/8` or `2001:db8::/32`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// A `--trusted-proxy` value that is neither a CIDR range nor an address.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a CIDR range (e.g. 10.0.0.0/8) or an IP address")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        let canonical = net.to_canonical();
        // ::ffff:a.b.c.d/104 is a.b.c.d/8.
        let prefix = if canonical.is_ipv4() && net.is_ipv6() {
            prefix.saturating_sub(96)
        } else {
            prefix
        };
        Ok(Cidr {
            net: canonical,
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        (a[full] & mask) == (b[full] & mask)
    }
}

/// The proxies whose word about the client's address is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self(ranges)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// Which header trusted proxies put the client's address in. Only one is read: a proxy that
/// appends to one passes the other through from the client untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name, lower case (as `http::HeaderMap` takes it).
    pub fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::XForwardedFor, Self::Forwarded]
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(s.trim()))
    }
}

/// The client's address. `peer` is the address the connection came from (the TCP peer, or
/// the source named by a PROXY protocol header); `values` are the lines of the `header`
/// the request carries, in order.
///
/// An untrusted peer is the client, whatever its headers say. From a trusted peer, the chain
/// is walked from the right past every trusted proxy; the first address that is not one is
/// the client. When every address is a trusted proxy, the left-most counts; when an entry is
/// not an address (`unknown`, an obfuscated name, garbage), the trusted hop to its right does.
pub fn client_ip<'a>(
    peer: IpAddr,
    trusted: &TrustedProxies,
    header: ForwardedHeader,
    values: impl DoubleEndedIterator<Item = &'a str>,
) -> IpAddr {
    let mut current = peer.to_canonical();
    if !trusted.contains(current) {
        return current;
    }
    for line in values.rev() {
        for element in split_unquoted(line, ',').rev() {
            let hop = match header {
                ForwardedHeader::XForwardedFor => parse_node(element),
                ForwardedHeader::Forwarded => forwarded_for(element).and_then(parse_node),
            };
            match hop {
                Some(ip) => current = ip.to_canonical(),
                None => return current,
            }
            if !trusted.contains(current) {
                return current;
            }
        }
    }
    current
}

/// The `for` parameter of one `Forwarded` element.
fn forwarded_for(element: &str) -> Option<&str> {
    split_unquoted(element, ';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`, possibly quoted.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s)
        .trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    s.strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse().ok())
}

/// `s` split at `sep`, except inside double quotes.
fn split_unquoted(s: &str, sep: char) -> impl DoubleEndedIterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.255.1.2")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.1.2.3")), "mapped IPv4 matches");
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        let v6: Cidr = "2001:db8::/33".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:7fff::1")));
        assert!(!v6.contains(ip("2001:db8:8000::1")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "10.0.0/8", "x", "::/129", "10.0.0.0/-1"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn x_forwarded_for_is_read_from_the_right_past_trusted_proxies() {
        let t = trusted(&["127.0.0.1/32", "10.0.0.0/8"]);
        let xff = ForwardedHeader::XForwardedFor;
        let lb = ip("127.0.0.1");
        // The client's own claim (left) is ignored; the proxy's entry counts.
        let got = client_ip(lb, &t, xff, ["1.2.3.4, 203.0.113.7"].into_iter());
        assert_eq!(got, ip("203.0.113.7"));
        // Hops through several trusted proxies, over several header lines.
        let got = client_ip(
            lb,
            &t,
            xff,
            ["203.0.113.7, 10.1.1.1", "10.2.2.2"].into_iter(),
        );
        assert_eq!(got, ip("203.0.113.7"));
        // An untrusted peer is the client, whatever it claims.
        let got = client_ip(ip("192.0.2.9"), &t, xff, ["203.0.113.7"].into_iter());
        assert_eq!(got, ip("192.0.2.9"));
        // No header: the trusted peer itself.
        assert_eq!(client_ip(lb, &t, xff, std::iter::empty()), lb);
        // Only trusted addresses: the left-most.
        let got = client_ip(lb, &t, xff, ["10.9.9.9, 10.1.1.1"].into_iter());
        assert_eq!(got, ip("10.9.9.9"));
        // Garbage where the proxy's entry should be: the trusted hop.
        let got = client_ip(lb, &t, xff, ["203.0.113.7, nonsense"].into_iter());
        assert_eq!(got, lb);
        // Ports and brackets as some proxies write them.
        let got = client_ip(lb, &t, xff, ["[2001:db8::7]:4711"].into_iter());
        assert_eq!(got, ip("2001:db8::7"));
        let got = client_ip(lb, &t, xff, ["203.0.113.7:5000"].into_iter());
        assert_eq!(got, ip("203.0.113.7"));
        // A mapped IPv6 peer is the IPv4 address it maps.
        let got = client_ip(ip("::ffff:127.0.0.1"), &t, xff, ["203.0.113.7"].into_iter());
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn forwarded_for_elements_are_read_like_x_forwarded_for() {
        let t = trusted(&["127.0.0.1/32"]);
        let fwd = ForwardedHeader::Forwarded;
        let lb = ip("127.0.0.1");
        let got = client_ip(
            lb,
            &t,
            fwd,
            [r#"for=1.2.3.4;proto=https, For="[2001:db8:cafe::17]:4711";host="a,b""#].into_iter(),
        );
        assert_eq!(got, ip("2001:db8:cafe::17"));
        let got = client_ip(lb, &t, fwd, ["for=198.51.100.1;by=127.0.0.1"].into_iter());
        assert_eq!(got, ip("198.51.100.1"));
        let got = client_ip(lb, &t, fwd, ["for=unknown"].into_iter());
        assert_eq!(got, lb);
        let got = client_ip(lb, &t, fwd, ["proto=https"].into_iter());
        assert_eq!(got, lb);
    }

    #[test]
    fn header_names_parse() {
        assert_eq!(
            ForwardedHeader::parse("X-Forwarded-For"),
            Some(ForwardedHeader::XForwardedFor)
        );
        assert_eq!(
            ForwardedHeader::parse("forwarded"),
            Some(ForwardedHeader::Forwarded)
        );
        assert_eq!(ForwardedHeader::parse("x-real-ip"), None);
    }
}
