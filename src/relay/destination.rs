//! Which addresses deliveries may go to. Unless private destinations are
//! allowed, an address on loopback, a private or shared network, link-local
//! (cloud metadata lives there), or otherwise not globally routable is refused.
//!
//! The check runs on the addresses a name resolves to at delivery time, inside
//! the HTTP client's resolver, so the address checked is the address connected
//! to: a name that resolves to a public address when the subscription is made
//! and to 169.254.169.254 later is still refused. URLs with a literal IP never
//! reach the resolver and are checked before the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why an address is refused, or `None` if deliveries may go there.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local (cloud metadata)")
    } else if a == 100 && (64..128).contains(&b) {
        // 100.64.0.0/10: carrier-grade NAT; some clouds put metadata here.
        Some("shared address space")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("broadcast, multicast or reserved")
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        // 192.0.0.0/24: IETF protocol assignments.
        Some("reserved")
    } else if ip.is_documentation() || (a == 198 && (b == 18 || b == 19)) {
        Some("documentation or benchmarking")
    } else {
        None
    }
}

/// Only global unicast (2000::/3) may be reached, less its ranges that tunnel
/// to IPv4 or are reserved; everything else is refused, with a label for the
/// log.
fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    let first = segments[0];
    if ip.is_loopback() {
        return Some("loopback");
    }
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if segments[..6] == [0; 6] {
        // ::a.b.c.d, the deprecated IPv4-compatible form.
        return Some("IPv4-compatible");
    }
    if segments[..4] == [0; 4] && segments[4] == 0xffff && segments[5] == 0 {
        // ::ffff:0:a.b.c.d, IPv4-translated (SIIT).
        return Some("IPv4-translated");
    }
    if ip.is_unique_local() {
        // fc00::/7, which includes AWS's metadata address fd00:ec2::254.
        return Some("private");
    }
    if ip.is_unicast_link_local() {
        return Some("link-local");
    }
    if first & 0xffc0 == 0xfec0 {
        return Some("site-local");
    }
    if ip.is_multicast() {
        return Some("multicast");
    }
    if first == 0x0064 && segments[1] == 0xff9b {
        // 64:ff9b::/96 and 64:ff9b:1::/48 (NAT64) reach any IPv4 address.
        return Some("NAT64");
    }
    if first & 0xe000 != 0x2000 {
        return Some("not global unicast");
    }
    if first == 0x2002 {
        // 6to4 embeds an IPv4 address.
        return Some("6to4");
    }
    if first == 0x2001 && segments[1] == 0 {
        // Teredo (2001::/32) tunnels to IPv4.
        return Some("Teredo");
    }
    if (first == 0x2001 && segments[1] == 0x0db8) || first & 0xfff0 == 0x3ff0 {
        // 2001:db8::/32 and 3fff::/20.
        return Some("documentation");
    }
    if first == 0x2001 && segments[1] < 0x0200 {
        // 2001::/23: IETF protocol assignments (ORCHID, AMT, benchmarking ...).
        return Some("reserved");
    }
    None
}

/// The error a refused destination surfaces as, inside reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("destination {ip} refused: {reason} address")]
pub struct Refused {
    pub ip: IpAddr,
    pub reason: &'static str,
}

/// Checks a URL's host if it is a literal IP (names are checked when resolved).
pub fn check_literal(url: &url::Url) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    match refused(ip) {
        Some(reason) => Err(Refused { ip, reason }),
        None => Ok(()),
    }
}

/// A resolver that drops refused addresses and fails when none is left.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver;

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| match refused(addr.ip()) {
                    Some(reason) => {
                        first_refusal.get_or_insert(Refused {
                            ip: addr.ip(),
                            reason,
                        });
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                if let Some(refusal) = first_refusal {
                    return Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>);
                }
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.1.2.3",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::169.254.169.254",
            "::a9fe:a9fe",
            "2001:0:4136:e378::1",
            "fec0::1",
            "192.0.0.170",
            "::ffff:0:7f00:1",
            "::ffff:0:a9fe:a9fe",
            "64:ff9b:1::a00:1",
            "100::1",
            "2001:db8::1",
            "2001:10::1",
            "3fff::1",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(refused(ip).is_some(), "{ip} should be refused");
        }
        let label = |ip: &str| refused(ip.parse().unwrap());
        assert_eq!(label("::1"), Some("loopback"));
        assert_eq!(label("::"), Some("unspecified"));
        assert_eq!(label("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(label("::ffff:0:7f00:1"), Some("IPv4-translated"));
    }

    #[test]
    fn public_addresses_are_allowed() {
        for ip in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "172.32.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(refused(ip), None, "{ip} should be allowed");
        }
    }

    #[test]
    fn literal_hosts_are_checked() {
        let url = |s: &str| url::Url::parse(s).unwrap();
        assert!(check_literal(&url("http://127.0.0.1:9/x")).is_err());
        assert!(check_literal(&url("http://[::1]/x")).is_err());
        assert!(check_literal(&url("http://[::ffff:0:7f00:1]/x")).is_err());
        assert!(check_literal(&url("http://1.1.1.1/x")).is_ok());
        assert!(check_literal(&url("http://localhost/x")).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused() {
        let err = match GuardedResolver.resolve("localhost".parse().unwrap()).await {
            Ok(_) => panic!("localhost resolved to an allowed address"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("loopback"), "{err}");
    }
}
