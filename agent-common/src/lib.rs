//! Types shared by the eBPF programs and the agent. Every type here crosses the kernel
//! boundary as raw bytes, so each is `#[repr(C)]`, has no implicit padding and is `Copy`.
#![no_std]

/// Names of the maps and programs in the object, so both sides spell them once.
pub mod names {
    pub const TARGETS: &str = "TARGETS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const PENDING: &str = "PENDING";
    pub const BY_PEER: &str = "BY_PEER";
    pub const STATS: &str = "STATS";
    pub const CONNECT4: &str = "sluice_connect4";
    pub const CONNECT6: &str = "sluice_connect6";
    pub const SOCKOPS: &str = "sluice_sockops";
    pub const SOCK_RELEASE: &str = "sluice_sock_release";
    pub const GETPEERNAME4: &str = "sluice_getpeername4";
    pub const GETPEERNAME6: &str = "sluice_getpeername6";
    pub const ORIG_DST: &str = "ORIG_DST";
    pub const RELAY_ON: &str = "RELAY_ON";
    pub const RELAY_SOCKS: &str = "RELAY_SOCKS";
    pub const RELAY_PEER: &str = "RELAY_PEER";
    pub const RELAY_WAKE: &str = "RELAY_WAKE";
    pub const RELAY: &str = "sluice_relay";
    pub const NETNS_READY: &str = "NETNS_READY";
    pub const NETNS_SEEN: &str = "NETNS_SEEN";
    pub const NETNS_WAKE: &str = "NETNS_WAKE";
}

/// Bounds of the maps. PENDING and BY_PEER are LRU: an entry whose connection never reached
/// the agent (SYN lost, client killed) is evicted instead of filling the map.
pub const MAX_TARGETS: u32 = 4096;
pub const MAX_PENDING: u32 = 65536;
/// Network namespaces (other than the agent's own) the maps can track: an upper bound for
/// the `max_namespaces` setting.
pub const MAX_NETNS: u32 = 4096;
/// Bytes of the NETNS_WAKE ring buffer (a record is 16 bytes with its header).
pub const NETNS_WAKE_BYTES: u32 = 16 * 1024;

/// LPM-trie key data: the destination port then the address, so a prefix always covers the
/// whole port (32 bits) plus the address prefix. IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`) so that one trie serves connect4 and connect6.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetKey {
    /// Destination port, network byte order.
    pub port: u16,
    pub _pad: u16,
    /// Destination address, network byte order, IPv4 mapped into IPv6.
    pub addr: [u8; 16],
}

/// Bits of the LPM key before the address starts (port + padding).
pub const TARGET_KEY_PORT_BITS: u32 = 32;
/// Bits of an IPv4-mapped address before the IPv4 part.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetValue {
    /// Index of the target in the agent's config; echoed back in `ConnMeta`.
    pub target_id: u32,
}

/// Where the hooks send matched connections, and how they recognise the agent's own sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// IPv4 listener, network byte order, as written to `bpf_sock_addr.user_ip4`.
    pub listen_ip4: u32,
    /// IPv4 listener port as written to `bpf_sock_addr.user_port` (network order, low 16 bits).
    pub listen_port4: u32,
    /// IPv6 listener, four network-order words as written to `bpf_sock_addr.user_ip6`.
    pub listen_ip6: [u32; 4],
    pub listen_port6: u32,
    /// `SO_MARK` the agent sets on its upstream sockets. A socket carrying it is let through
    /// only when the process connecting is the agent itself (`agent_tgid`).
    pub bypass_mark: u32,
    /// `SETTINGS_*` bits.
    pub flags: u32,
    /// The agent's process id as `bpf_get_current_pid_tgid() >> 32` reports it: the tgid in
    /// the initial pid namespace. 0: nobody may bypass (an agent that has stopped).
    pub agent_tgid: u32,
    /// `bpf_get_netns_cookie` of the agent's own network namespace, where its main
    /// listeners are. Connections from any other namespace are redirected only once that
    /// namespace is in NETNS_READY (it has a listener of its own).
    pub agent_netns_cookie: u64,
}

/// The hooks do nothing until the agent has written the settings.
pub const SETTINGS_ENABLED: u32 = 1;
/// An IPv6 listener exists; without it IPv6 targets are not redirected (fail-open is logged by
/// the agent at start, since it is a configuration choice).
pub const SETTINGS_HAVE_V6: u32 = 2;
/// A target connection from a namespace that has no listener yet is refused (connect()
/// fails with EPERM) instead of going straight to the server.
pub const SETTINGS_NETNS_FAIL_CLOSED: u32 = 4;

/// What the connect hook learnt about one redirected connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    /// Original destination address, network order, IPv4 mapped into IPv6.
    pub orig_addr: [u8; 16],
    /// Original destination port, host order.
    pub orig_port: u16,
    /// 4 or 6: which hook saw the connect (a v4-mapped connect6 reports 6).
    pub hook_family: u16,
    pub target_id: u32,
    /// Thread id and process id (kernel pid and tgid) of the caller.
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub socket_cookie: u64,
    pub netns_cookie: u64,
    pub comm: [u8; 16],
}

/// The destination a redirected socket dialled, for getpeername() on the client side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst {
    /// Network order, IPv4 mapped into IPv6.
    pub addr: [u8; 16],
    /// Network order, as in `bpf_sock_addr.user_port`.
    pub port: u32,
}

/// The client's own (network namespace, address, port): the namespace of the listener that
/// accepted the connection and the accepted socket's peer address. Two namespaces can use
/// the same address and port at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// `bpf_get_netns_cookie` of the client's namespace (`SO_NETNS_COOKIE` of the listener).
    pub netns_cookie: u64,
    /// Network order, IPv4 mapped into IPv6.
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// A relayed socket's entry in RELAY_PEER. Written by the agent at pairing; `redirected` is
/// then counted by the verdict program (one socket's verdicts never run concurrently: they
/// run under that socket's lock).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPeer {
    /// Cookie of the other socket of the connection.
    pub peer: u64,
    /// Bytes redirected from this socket since pairing.
    pub redirected: u64,
    /// Every time `redirected` passes a multiple of this, the program writes this socket's
    /// cookie to RELAY_WAKE so the agent looks at the connection (0: never).
    pub wake_every: u64,
}

/// Bytes of the RELAY_WAKE ring buffer (a record is 16 bytes with its header).
pub const RELAY_WAKE_BYTES: u32 = 64 * 1024;

/// Indexes into the STATS per-CPU counter array.
pub mod stat {
    /// Connections rewritten to the listener.
    pub const REDIRECTED: u32 = 0;
    /// Redirected, but their metadata could not be stored: the agent will refuse them.
    pub const META_STORE_FAILED: u32 = 1;
    /// sock_ops could not re-key metadata by peer.
    pub const PEER_STORE_FAILED: u32 = 2;
    /// Connections skipped because they carry the agent's bypass mark.
    pub const BYPASSED: u32 = 3;
    /// IPv6 target matched but no IPv6 listener is configured.
    pub const NO_V6_LISTENER: u32 = 4;
    /// Sockets carrying the bypass mark from a process other than the agent: intercepted
    /// like any other (the mark is not a credential).
    pub const MARK_NOT_AGENT: u32 = 5;
    /// Connections to an unspecified address (0.0.0.0, ::, ::ffff:0.0.0.0) that were
    /// looked up as the address the kernel turns them into.
    pub const UNSPECIFIED: u32 = 6;
    /// Target connections from a network namespace without a listener yet, refused
    /// (fail_mode closed) while the agent prepares one.
    pub const NETNS_REFUSED: u32 = 7;
    /// The same, let through unredirected (fail_mode open).
    pub const NETNS_PASSED: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// Builds an IPv4-mapped IPv6 address from IPv4 octets.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// `::ffff:0:0/96`'s third word as it sits in `bpf_sock_addr.user_ip6[2]` (network order).
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// 127.0.0.1 as a network-order word.
pub const LOOPBACK4_WORD: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// ::1 as four network-order words.
pub const LOOPBACK6_WORDS: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

/// The IPv4 destination a TCP connect() really reaches when it names `dst` (network order)
/// from a socket bound to `bound_src`. The kernel routes 0.0.0.0 to the socket's bound source
/// address, or to 127.0.0.1 when the socket is unbound, *after* the connect hook has run
/// (`ip_route_output_key_hash_rcu`), so the hook must look the target up as that address.
#[inline(always)]
pub const fn effective_dst4(dst: u32, bound_src: u32) -> u32 {
    if dst != 0 {
        dst
    } else if bound_src != 0 {
        bound_src
    } else {
        LOOPBACK4_WORD
    }
}

/// The IPv6 destination (four network-order words) a TCP connect() really reaches, for a
/// socket whose bound source address is `bound_src`:
/// - `::` becomes `::1`, or `::ffff:127.0.0.1` on a socket bound to an IPv4-mapped address
///   (`tcp_v6_connect`);
/// - `::ffff:0.0.0.0` is IPv4's 0.0.0.0 (see [`effective_dst4`]): the IPv4 part of a mapped
///   bound address, else 127.0.0.1.
#[inline(always)]
pub const fn effective_dst6(dst: [u32; 4], bound_src: [u32; 4]) -> [u32; 4] {
    let src_mapped = bound_src[0] == 0 && bound_src[1] == 0 && bound_src[2] == V4_MAPPED_WORD;
    if dst[0] == 0 && dst[1] == 0 && dst[2] == 0 && dst[3] == 0 {
        if src_mapped {
            [0, 0, V4_MAPPED_WORD, LOOPBACK4_WORD]
        } else {
            LOOPBACK6_WORDS
        }
    } else if dst[0] == 0 && dst[1] == 0 && dst[2] == V4_MAPPED_WORD && dst[3] == 0 {
        let src4 = if src_mapped { bound_src[3] } else { 0 };
        [0, 0, V4_MAPPED_WORD, effective_dst4(0, src4)]
    } else {
        dst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w4(o: [u8; 4]) -> u32 {
        u32::from_ne_bytes(o)
    }

    fn w6(a: core::net::Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        [
            w4([o[0], o[1], o[2], o[3]]),
            w4([o[4], o[5], o[6], o[7]]),
            w4([o[8], o[9], o[10], o[11]]),
            w4([o[12], o[13], o[14], o[15]]),
        ]
    }

    fn v6(s: &str) -> [u32; 4] {
        w6(s.parse().unwrap_or(core::net::Ipv6Addr::UNSPECIFIED))
    }

    #[test]
    fn unspecified_ipv4_becomes_bound_source_or_loopback() {
        assert_eq!(effective_dst4(0, 0), w4([127, 0, 0, 1]));
        assert_eq!(effective_dst4(0, w4([127, 9, 9, 9])), w4([127, 9, 9, 9]));
        let other = w4([127, 0, 0, 5]);
        assert_eq!(effective_dst4(other, w4([127, 9, 9, 9])), other);
    }

    #[test]
    fn unspecified_ipv6_forms_become_what_the_kernel_dials() {
        assert_eq!(effective_dst6(v6("::"), v6("::")), v6("::1"));
        assert_eq!(effective_dst6(v6("::"), v6("fd00::1")), v6("::1"));
        assert_eq!(
            effective_dst6(v6("::"), v6("::ffff:127.0.0.9")),
            v6("::ffff:127.0.0.1")
        );
        assert_eq!(
            effective_dst6(v6("::ffff:0.0.0.0"), v6("::")),
            v6("::ffff:127.0.0.1")
        );
        assert_eq!(
            effective_dst6(v6("::ffff:0.0.0.0"), v6("::ffff:127.0.0.9")),
            v6("::ffff:127.0.0.9")
        );
        for other in ["::1", "::ffff:127.0.0.5", "fd5c:51ce::1", "::0.0.0.1"] {
            assert_eq!(effective_dst6(v6(other), v6("::")), v6(other), "{other}");
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, and have no padding bytes (fields are laid out
    // at natural alignment with explicit `_pad` fields), so any bit pattern is valid.
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::TargetValue {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::ConnMeta {}
    unsafe impl aya::Pod for super::PeerKey {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::RelayPeer {}
}
