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
}

/// Bounds of the maps. PENDING and BY_PEER are LRU: an entry whose connection never reached
/// the agent (SYN lost, client killed) is evicted instead of filling the map.
pub const MAX_TARGETS: u32 = 4096;
pub const MAX_PENDING: u32 = 65536;

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
    /// `SO_MARK` the agent sets on its upstream sockets; such sockets are never redirected.
    pub bypass_mark: u32,
    /// `SETTINGS_*` bits.
    pub flags: u32,
}

/// The hooks do nothing until the agent has written the settings.
pub const SETTINGS_ENABLED: u32 = 1;
/// An IPv6 listener exists; without it IPv6 targets are not redirected (fail-open is logged by
/// the agent at start, since it is a configuration choice).
pub const SETTINGS_HAVE_V6: u32 = 2;

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

/// The client's own (address, port): the peer address of the socket the agent accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Network order, IPv4 mapped into IPv6.
    pub addr: [u8; 16],
    /// Host order.
    pub port: u16,
    pub _pad: u16,
}

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
    pub const COUNT: u32 = 5;
}

/// Builds an IPv4-mapped IPv6 address from IPv4 octets.
pub const fn v4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
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
}
