//! cgroup/sock_release: drop the per-socket entries of a socket that goes away: its
//! ORIG_DST (kept for getpeername) and, if it never reached TCP_CONNECT_CB (connect failed
//! early, socket closed first), its PENDING entry. BY_PEER entries are *not* removed here:
//! a client may close right after sending, before the agent accepts, and the agent still
//! needs to attribute that connection to deliver its bytes.
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};

use crate::maps::{ORIG_DST, PENDING};

#[cgroup_sock(sock_release)]
pub fn sluice_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = PENDING.remove(&cookie);
    let _ = ORIG_DST.remove(&cookie);
    1
}
