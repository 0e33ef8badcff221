//! sock_ops: when the kernel has chosen the client's local port (TCP_CONNECT_CB, before the
//! SYN leaves), re-key the connect hook's metadata by that (address, port). The agent finds it
//! from the accepted socket's peer address, so there is no race with accept().
use agent_common::{PeerKey, stat, v4_mapped};
use aya_ebpf::{
    EbpfContext as _, bindings::BPF_SOCK_OPS_TCP_CONNECT_CB,
    helpers::generated::bpf_get_socket_cookie, macros::sock_ops, programs::SockOpsContext,
};

use core::ptr::{addr_of, read_volatile};

use crate::maps::{BY_PEER, PENDING, count};

const AF_INET: u32 = 2;

#[sock_ops]
pub fn sluice_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        try_connect_cb(&ctx);
    }
    1
}

fn try_connect_cb(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // Every context field is read up front with its own 4-byte load. Reading them inside the
    // branches let LLVM share one pointer `ctx + off` between paths, which the verifier
    // rejects: "dereference of modified ctx ptr R9 off=28 disallowed".
    let (family, ip4, ip6, port) = unsafe {
        (
            read_volatile(addr_of!((*ops).family)),
            read_volatile(addr_of!((*ops).local_ip4)),
            [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ],
            read_volatile(addr_of!((*ops).local_port)),
        )
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before any map update can alias it.
    let Some(meta) = (unsafe { PENDING.get(&cookie) }).copied() else {
        return;
    };
    // local_ip4/local_ip6 are network order; local_port is host order.
    let addr = if family == AF_INET {
        v4_mapped(ip4.to_ne_bytes())
    } else {
        let mut a = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = ip6[i].to_ne_bytes();
            a[i * 4] = b[0];
            a[i * 4 + 1] = b[1];
            a[i * 4 + 2] = b[2];
            a[i * 4 + 3] = b[3];
            i += 1;
        }
        a
    };
    let key = PeerKey {
        netns_cookie: meta.netns_cookie,
        addr,
        port: port as u16,
        _pad: 0,
        _pad2: 0,
    };
    if BY_PEER.insert(&key, &meta, 0).is_err() {
        count(stat::PEER_STORE_FAILED);
    }
    let _ = PENDING.remove(&cookie);
}
