//! sk_skb stream_verdict for the in-kernel L4 relay: every data skb that reaches a socket in
//! RELAY_ON is sent out of its peer socket (egress), found through RELAY_PEER by socket
//! cookie. The agent owns every entry: it pairs the two sockets of a connection, takes a
//! socket out of RELAY_ON to pause that direction, and removes both at the end.
use aya_ebpf::{
    EbpfContext as _, bindings::sk_action, helpers::generated::bpf_get_socket_cookie,
    macros::stream_verdict, programs::SkBuffContext,
};

use crate::maps::{RELAY_PEER, RELAY_SOCKS};

#[stream_verdict]
pub fn sluice_relay(ctx: SkBuffContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is a plain u64 copied out before anything else touches the map.
    let Some(peer) = (unsafe { RELAY_PEER.get(&cookie) }) else {
        // Not paired (yet, or any more): userspace reads it like any socket data.
        return sk_action::SK_PASS;
    };
    if ctx.len() == 0 {
        // A bare FIN. Its state change is already done (userspace sees POLLRDHUP and sends
        // the peer's FIN itself); redirected, the empty skb would make the peer's send
        // loop report EPIPE (skb_send_sock sends 0 bytes, read as a hard error) and stop
        // the peer's queue.
        return sk_action::SK_DROP;
    }
    let mut peer = *peer;
    // SK_PASS when queued on the peer; SK_DROP when the peer has left RELAY_SOCKS, which
    // only happens while the agent tears the connection down.
    RELAY_SOCKS.redirect_skb(&ctx, &mut peer, 0) as u32
}
