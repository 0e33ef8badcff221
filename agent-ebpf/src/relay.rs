//! sk_skb stream_verdict for the in-kernel L4 relay: every data skb that reaches a socket in
//! RELAY_ON is sent out of its peer socket (egress), found through RELAY_PEER by socket
//! cookie. The agent owns every entry: it pairs the two sockets of a connection and removes
//! both at the end. The program counts each socket's redirected bytes and notes in
//! RELAY_WAKE when they pass a mark, the only way the agent learns that data moved.
use aya_ebpf::{
    EbpfContext as _, bindings::sk_action, helpers::generated::bpf_get_socket_cookie,
    macros::stream_verdict, programs::SkBuffContext,
};

use crate::maps::{RELAY_PEER, RELAY_SOCKS, RELAY_WAKE};

#[stream_verdict]
pub fn sluice_relay(ctx: SkBuffContext) -> u32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(entry) = RELAY_PEER.get_ptr_mut(&cookie) else {
        // Not paired (yet, or any more): userspace reads it like any socket data.
        return sk_action::SK_PASS;
    };
    let len = u64::from(ctx.len());
    if len == 0 {
        // A bare FIN. Its state change is already done (userspace sees POLLRDHUP and sends
        // the peer's FIN itself); redirected, the empty skb would make the peer's send
        // loop report EPIPE (skb_send_sock sends 0 bytes, read as a hard error) and stop
        // the peer's queue.
        return sk_action::SK_DROP;
    }
    // SAFETY: the entry is only written here (under this socket's lock) and at pairing,
    // before the socket is in RELAY_ON.
    let (mut peer, before, every) =
        unsafe { ((*entry).peer, (*entry).redirected, (*entry).wake_every) };
    // SK_PASS when queued on the peer; SK_DROP when the peer has left RELAY_SOCKS, which
    // only happens while the agent tears the connection down.
    let verdict = RELAY_SOCKS.redirect_skb(&ctx, &mut peer, 0) as u32;
    if verdict == sk_action::SK_PASS {
        let after = before.wrapping_add(len);
        unsafe { (*entry).redirected = after };
        // The agent's task never sees this data arrive: tell it every `every` bytes, so the
        // queue limit is checked while the queue grows. A full ring buffer loses the note;
        // the next mark sends another.
        if every != 0 && after / every != before / every {
            let _ = RELAY_WAKE.output::<u64>(&cookie, 0);
        }
    }
    verdict
}
