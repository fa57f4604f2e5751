//! Whether the appliance endpoint is reachable from the internet: a warning at start when
//! a listener's address is public, or is the wildcard on a host that has a public address.
//!
//! Called by `app` once the listeners are bound. Best effort: it reads this host's
//! addresses from /proc, and an unreadable file means no warning, never a failed start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The appliance endpoint belongs on the LAN: say so when its address says otherwise.
pub fn warn_if_exposed(key: &str, listen: SocketAddr) {
    let ip = listen.ip();
    if is_public(ip) {
        log::warn!(
            "{key} {listen} is a public address: the appliance endpoint is reachable from the internet; bind it to the LAN address"
        );
    } else if ip.is_unspecified() {
        let public: Vec<String> = local_addresses()
            .into_iter()
            .filter(|a| is_public(*a))
            .map(|a| a.to_string())
            .collect();
        if !public.is_empty() {
            log::warn!(
                "{key} {listen} binds every interface, and this host has public address(es) {}: the appliance endpoint is reachable from the internet; bind it to the LAN address",
                public.join(", ")
            );
        }
    }
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            // Unique local (fc00::/7) and link-local (fe80::/10) stay on the site.
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80)
        }
    }
}

/// This host's own addresses, from /proc (IPv4: the LOCAL host routes of the FIB; IPv6:
/// if_inet6). Best effort: an unreadable file means no addresses.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let fib = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last: Option<Ipv4Addr> = None;
    for line in fib.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-', '`']);
        if let Ok(a) = t.trim().parse::<Ipv4Addr>() {
            last = Some(a);
        } else if t.trim() == "/32 host LOCAL" {
            out.extend(last.take().map(IpAddr::V4));
        }
    }
    let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in v6.lines() {
        if let Some(hex) = line.split_whitespace().next()
            && let Ok(n) = u128::from_str_radix(hex, 16)
        {
            out.push(IpAddr::V6(Ipv6Addr::from(n)));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_site_addresses_are_told_apart() {
        for a in [
            "192.168.1.5",
            "10.0.0.1",
            "172.16.3.4",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.4.4", "203.0.113.7", "2001:db8::1"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
        assert!(
            local_addresses().iter().any(|a| a.is_loopback()),
            "{:?}",
            local_addresses()
        );
    }
}
