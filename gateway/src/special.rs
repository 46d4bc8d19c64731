//! The addresses a name may never lead the egress proxy to: every block of
//! the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and
//! its updates), multicast, and the deprecated IPv6 site-local and
//! IPv4-compatible ranges. An IPv4 address carried inside an IPv6 one
//! (IPv4-mapped, NAT64 `64:ff9b::/96`) is judged as that IPv4 address;
//! 6to4 and Teredo are refused whole.
//!
//! The proxy connects to such an address only when a rule names it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 block of the registry: its first address, prefix length and name.
pub const V4_SPECIAL: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "this network"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private-use"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared address space (CGNAT)",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private-use"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        29,
        "IPv4 service continuity prefix",
    ),
    (Ipv4Addr::new(192, 0, 0, 8), 32, "IPv4 dummy address"),
    (
        Ipv4Addr::new(192, 0, 0, 9),
        32,
        "port control protocol anycast",
    ),
    (Ipv4Addr::new(192, 0, 0, 10), 32, "TURN anycast"),
    (Ipv4Addr::new(192, 0, 0, 170), 32, "NAT64/DNS64 discovery"),
    (Ipv4Addr::new(192, 0, 0, 171), 32, "NAT64/DNS64 discovery"),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation (TEST-NET-1)",
    ),
    (Ipv4Addr::new(192, 31, 196, 0), 24, "AS112-v4"),
    (Ipv4Addr::new(192, 52, 193, 0), 24, "AMT"),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "deprecated 6to4 relay anycast",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private-use"),
    (
        Ipv4Addr::new(192, 175, 48, 0),
        24,
        "direct delegation AS112 service",
    ),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking"),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation (TEST-NET-2)",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation (TEST-NET-3)",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "limited broadcast"),
];

/// An IPv6 block of the registry (and multicast, site-local, IPv4-compatible).
pub const V6_SPECIAL: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        "deprecated IPv4-compatible",
    ),
    (
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        "local-use IPv4/IPv6 translation",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
        64,
        "discard-only",
    ),
    (
        Ipv6Addr::new(0x100, 0, 0, 1, 0, 0, 0, 0),
        64,
        "dummy IPv6 prefix",
    ),
    (
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        23,
        "IETF protocol assignments",
    ),
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32, "Teredo"),
    (
        Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 1),
        128,
        "port control protocol anycast",
    ),
    (
        Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 2),
        128,
        "TURN anycast",
    ),
    (
        Ipv6Addr::new(0x2001, 1, 0, 0, 0, 0, 0, 3),
        128,
        "DNS-SD service registration anycast",
    ),
    (
        Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0),
        48,
        "benchmarking",
    ),
    (Ipv6Addr::new(0x2001, 3, 0, 0, 0, 0, 0, 0), 32, "AMT"),
    (
        Ipv6Addr::new(0x2001, 4, 0x112, 0, 0, 0, 0, 0),
        48,
        "AS112-v6",
    ),
    (
        Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0),
        28,
        "deprecated ORCHID",
    ),
    (
        Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0),
        28,
        "ORCHIDv2",
    ),
    (
        Ipv6Addr::new(0x2001, 0x30, 0, 0, 0, 0, 0, 0),
        28,
        "drone remote ID",
    ),
    (
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
        32,
        "documentation",
    ),
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4"),
    (
        Ipv6Addr::new(0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0),
        48,
        "direct delegation AS112 service",
    ),
    (
        Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
        20,
        "documentation",
    ),
    (
        Ipv6Addr::new(0x5f00, 0, 0, 0, 0, 0, 0, 0),
        16,
        "segment routing (SRv6) SIDs",
    ),
    (
        Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
        7,
        "unique-local",
    ),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    (
        Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
        10,
        "deprecated site-local",
    ),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

/// The IPv4/IPv6 translation prefix (RFC 6052): the last 32 bits are an IPv4 address.
const NAT64: (Ipv6Addr, u8) = (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);

fn in_v4(a: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(net) & mask
}

fn in_v6(a: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(a) & mask == u128::from(net) & mask
}

/// The special-purpose block `ip` is in, by name; `None` for an ordinary
/// public address.
pub fn special_block(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => V4_SPECIAL
            .iter()
            .find(|(net, len, _)| in_v4(a, (*net, *len)))
            .map(|(_, _, name)| *name),
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return special_block(IpAddr::V4(v4));
            }
            if in_v6(a, NAT64) {
                let [.., a1, a2, a3, a4] = a.octets();
                return special_block(IpAddr::V4(Ipv4Addr::new(a1, a2, a3, a4)));
            }
            V6_SPECIAL
                .iter()
                .find(|(net, len, _)| in_v6(a, (*net, *len)))
                .map(|(_, _, name)| *name)
        }
    }
}

/// Whether a name must not lead to `ip` (see the module documentation).
pub fn is_internal(ip: IpAddr) -> bool {
    special_block(ip).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_v4(net: Ipv4Addr, len: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(net) | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }

    fn last_v6(net: Ipv6Addr, len: u8) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(net) | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0))
    }

    /// Regression (issue 22, item 13): the first and last address of every
    /// registry block is internal, also when carried in IPv6.
    #[test]
    fn every_block_of_both_registries_is_internal_from_first_to_last_address() {
        for (net, len, name) in V4_SPECIAL {
            for a in [*net, last_v4(*net, *len)] {
                assert!(is_internal(IpAddr::V4(a)), "{a} ({name})");
                assert!(
                    is_internal(IpAddr::V6(a.to_ipv6_mapped())),
                    "{a} mapped ({name})"
                );
                let [a1, a2, a3, a4] = a.octets();
                let nat64 = Ipv6Addr::new(
                    0x64,
                    0xff9b,
                    0,
                    0,
                    0,
                    0,
                    u16::from_be_bytes([a1, a2]),
                    u16::from_be_bytes([a3, a4]),
                );
                assert!(is_internal(IpAddr::V6(nat64)), "{nat64} ({name} via NAT64)");
            }
        }
        for (net, len, name) in V6_SPECIAL {
            for a in [*net, last_v6(*net, *len)] {
                assert!(is_internal(IpAddr::V6(a)), "{a} ({name})");
            }
        }
    }

    #[test]
    fn the_misses_the_issue_found_and_ordinary_addresses() {
        for a in [
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "fec0::1",
            "240.0.0.1",
            "255.255.255.254",
            "2001::1",
            "::127.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "192.0.1.255",
            "198.20.0.1",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "64:ff9b::5db8:d822",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }
}
