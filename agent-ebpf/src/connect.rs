//! cgroup/connect4 and cgroup/connect6: rewrite the destination of target connections to the
//! agent's listener and remember who called and where they meant to go.
use agent_common::{
    ConnMeta, SETTINGS_ENABLED, SETTINGS_HAVE_V6, SETTINGS_NETNS_FAIL_CLOSED, Settings,
    TARGET_KEY_PORT_BITS, TargetKey, V4_MAPPED_PREFIX_BITS, V4_MAPPED_WORD, effective_dst4,
    effective_dst6, stat, v4_mapped,
};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use crate::maps::{
    NETNS_READY, NETNS_SEEN, NETNS_WAKE, ORIG_DST, PENDING, TARGETS, count, settings,
};

/// bpf_map_update_elem flag: only insert a key that is not there yet.
const BPF_NOEXIST: u64 = 1;

const SOCK_STREAM: u32 = 1;
/// cgroup/connect return value that lets connect() proceed.
const ALLOW: i32 = 1;
/// cgroup/connect return value that makes connect() fail with EPERM.
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    try_connect4(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn sluice_connect6(ctx: SockAddrContext) -> i32 {
    try_connect6(&ctx)
}

/// Where a target connection from the caller's namespace may go.
enum Netns {
    /// The agent's namespace or one with its own listener: redirect (the cookie is kept).
    Served(u64),
    /// No listener there yet: the agent has been told; connect() gets this verdict.
    Unprepared(i32),
}

/// A target connection from a namespace without a listener would be rewritten to a loopback
/// where nothing listens: note the namespace for the agent, and refuse (fail closed) or let
/// it through unredirected (fail open) until the agent has prepared it.
#[inline(always)]
fn netns_verdict(ctx: &SockAddrContext, cfg: &Settings) -> Netns {
    let ns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if ns == cfg.agent_netns_cookie || unsafe { NETNS_READY.get(&ns) }.is_some() {
        return Netns::Served(ns);
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Only the first connection of a namespace not yet taken up by the agent wakes it; the
    // retries of a client refused meanwhile find the entry there.
    if NETNS_SEEN.insert(&ns, &tgid, BPF_NOEXIST).is_ok() {
        let _ = NETNS_WAKE.output::<u64>(&ns, 0);
    }
    if cfg.flags & SETTINGS_NETNS_FAIL_CLOSED != 0 {
        count(stat::NETNS_REFUSED);
        Netns::Unprepared(REFUSE)
    } else {
        count(stat::NETNS_PASSED);
        Netns::Unprepared(ALLOW)
    }
}

fn try_connect4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some((cfg, sk)) = eligible(sa) else {
        return ALLOW;
    };
    // Context fields are read with 4-byte loads: the verifier rejects narrower or merged
    // accesses to bpf_sock_addr.
    let dialled = unsafe { read_volatile(addr_of!((*sa).user_ip4)) };
    let port_word = unsafe { read_volatile(addr_of!((*sa).user_port)) };
    let bound = unsafe { read_volatile(addr_of!((*sk).src_ip4)) };
    // 0.0.0.0 is routed to the bound source or loopback after this hook: look it up, and
    // record it, as that address, so the agent forwards where the kernel would have.
    let ip4 = effective_dst4(dialled, bound);
    if dialled == 0 {
        count(stat::UNSPECIFIED);
    }
    if ip4 == cfg.listen_ip4 && port_word == cfg.listen_port4 {
        return ALLOW;
    }
    let addr = v4_mapped(ip4.to_ne_bytes());
    let Some(target_id) = lookup(addr, port_word as u16, V4_MAPPED_PREFIX_BITS + 32) else {
        return ALLOW;
    };
    let ns = match netns_verdict(ctx, cfg) {
        Netns::Served(ns) => ns,
        Netns::Unprepared(verdict) => return verdict,
    };
    remember(ctx, addr, port_word as u16, 4, target_id, ns);
    set_dst4(sa, cfg.listen_ip4, cfg.listen_port4);
    count(stat::REDIRECTED);
    ALLOW
}

fn try_connect6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some((cfg, sk)) = eligible(sa) else {
        return ALLOW;
    };
    // One 4-byte load per word at a constant offset: see try_connect4 (and sockops.rs: the
    // verifier also rejects loads through a modified socket pointer).
    let (dialled, bound) = unsafe {
        (
            [
                read_volatile(addr_of!((*sa).user_ip6[0])),
                read_volatile(addr_of!((*sa).user_ip6[1])),
                read_volatile(addr_of!((*sa).user_ip6[2])),
                read_volatile(addr_of!((*sa).user_ip6[3])),
            ],
            [
                read_volatile(addr_of!((*sk).src_ip6[0])),
                read_volatile(addr_of!((*sk).src_ip6[1])),
                read_volatile(addr_of!((*sk).src_ip6[2])),
                read_volatile(addr_of!((*sk).src_ip6[3])),
            ],
        )
    };
    let port_word = unsafe { read_volatile(addr_of!((*sa).user_port)) };
    // `::` and `::ffff:0.0.0.0` become loopback (or the bound address) after this hook.
    let w6 = effective_dst6(dialled, bound);
    if w6 != dialled {
        count(stat::UNSPECIFIED);
    }
    let mut addr = [0u8; 16];
    for (i, w) in w6.iter().enumerate() {
        let b = w.to_ne_bytes();
        addr[i * 4..i * 4 + 4].copy_from_slice(&b);
    }
    let mapped = is_v4_mapped(&addr);
    if mapped {
        let ip4 = w6[3];
        if ip4 == cfg.listen_ip4 && port_word == cfg.listen_port4 {
            return ALLOW;
        }
    } else if w6 == cfg.listen_ip6 && port_word == cfg.listen_port6 {
        return ALLOW;
    }
    let Some(target_id) = lookup(addr, port_word as u16, 128) else {
        return ALLOW;
    };
    if !mapped && cfg.flags & SETTINGS_HAVE_V6 == 0 {
        count(stat::NO_V6_LISTENER);
        return ALLOW;
    }
    let ns = match netns_verdict(ctx, cfg) {
        Netns::Served(ns) => ns,
        Netns::Unprepared(verdict) => return verdict,
    };
    remember(ctx, addr, port_word as u16, 6, target_id, ns);
    // A dual-stack socket dialling ::ffff:a.b.c.d is really IPv4: answer with the
    // v4-mapped IPv4 listener so the kernel keeps it on the IPv4 path.
    let (dst, port) = if mapped {
        ([0, 0, V4_MAPPED_WORD, cfg.listen_ip4], cfg.listen_port4)
    } else {
        (cfg.listen_ip6, cfg.listen_port6)
    };
    set_dst6(sa, dst, port);
    count(stat::REDIRECTED);
    ALLOW
}

/// TCP only, settings present, and not one of the agent's own upstream sockets. Returns the
/// settings and the socket.
#[inline(always)]
fn eligible(sa: *mut bpf_sock_addr) -> Option<(&'static Settings, *mut bpf_sock)> {
    let cfg = settings()?;
    if cfg.flags & SETTINGS_ENABLED == 0 {
        return None;
    }
    let sock_type = unsafe { read_volatile(addr_of!((*sa).type_)) };
    if sock_type != SOCK_STREAM {
        return None;
    }
    let sk = unsafe { (*sa).__bindgen_anon_1.sk };
    if sk.is_null() {
        return None;
    }
    let mark = unsafe { read_volatile(addr_of!((*sk).mark)) };
    if cfg.bypass_mark != 0 && mark == cfg.bypass_mark {
        // The mark alone is no credential: any process with CAP_NET_ADMIN (in its network
        // namespace's user namespace) can set it. Only the agent's own process may bypass.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if cfg.agent_tgid != 0 && tgid == cfg.agent_tgid {
            count(stat::BYPASSED);
            return None;
        }
        count(stat::MARK_NOT_AGENT);
    }
    Some((cfg, sk))
}

#[inline(always)]
fn lookup(addr: [u8; 16], port_net: u16, addr_bits: u32) -> Option<u32> {
    let key = Key::new(
        TARGET_KEY_PORT_BITS + addr_bits,
        TargetKey {
            port: port_net,
            _pad: 0,
            addr,
        },
    );
    TARGETS.get(&key).map(|v| v.target_id)
}

#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}

/// Stores who connected and where to; failures are counted, never block the redirect.
#[inline(always)]
fn remember(
    ctx: &SockAddrContext,
    addr: [u8; 16],
    port_net: u16,
    family: u16,
    target_id: u32,
    netns_cookie: u64,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let meta = ConnMeta {
        orig_addr: addr,
        orig_port: u16::from_be(port_net),
        hook_family: family,
        target_id,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        socket_cookie: cookie,
        netns_cookie,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = ORIG_DST.insert(
        &cookie,
        &agent_common::OrigDst {
            addr,
            port: u32::from(port_net),
        },
        0,
    );
    if PENDING.insert(&cookie, &meta, 0).is_err() {
        count(stat::META_STORE_FAILED);
        warn!(
            ctx,
            "sluice: could not store metadata for socket {}; the agent will refuse it", cookie
        );
    }
}

/// getpeername() on a redirected socket returns the address the client dialled, not the
/// listener: clients that check or log their peer see nothing of Sluice.
#[cgroup_sock_addr(getpeername4)]
pub fn sluice_getpeername4(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = unsafe { ORIG_DST.get(&cookie) } {
        set_dst4(ctx.sock_addr, words(&orig.addr)[3], orig.port);
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sluice_getpeername6(ctx: SockAddrContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(orig) = unsafe { ORIG_DST.get(&cookie) } {
        set_dst6(ctx.sock_addr, words(&orig.addr), orig.port);
    }
    ALLOW
}

/// The address as the four network-order words of `bpf_sock_addr.user_ip6`.
#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

// Context writes are one 4-byte volatile store per field: the verifier rejects merged or
// narrowed stores to bpf_sock_addr.
#[inline(always)]
fn set_dst4(sa: *mut bpf_sock_addr, ip4: u32, port_word: u32) {
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip4), ip4);
        write_volatile(addr_of_mut!((*sa).user_port), port_word);
    }
}

#[inline(always)]
fn set_dst6(sa: *mut bpf_sock_addr, ip6: [u32; 4], port_word: u32) {
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), ip6[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), ip6[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), ip6[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), ip6[3]);
        write_volatile(addr_of_mut!((*sa).user_port), port_word);
    }
}
