//! cgroup/sock_release: a socket that was redirected but never reached TCP_CONNECT_CB
//! (connect failed early, socket closed first) would leave its PENDING entry until LRU
//! eviction; drop it as soon as the socket goes away. BY_PEER entries are *not* removed here:
//! a client may close right after sending, before the agent accepts, and the agent still
//! needs to attribute that connection to deliver its bytes.
use aya_ebpf::{
    EbpfContext as _, helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock,
    programs::SockContext,
};

use crate::maps::PENDING;

#[cgroup_sock(sock_release)]
pub fn sluice_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = PENDING.remove(&cookie);
    1
}
