//! Maps shared by the hooks. Each is written by one side only, named in its doc.
use agent_common::{
    ConnMeta, MAX_NETNS, MAX_PENDING, MAX_TARGETS, NETNS_WAKE_BYTES, OrigDst, PeerKey,
    RELAY_WAKE_BYTES, RelayPeer, Settings, TargetKey, TargetValue, stat,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash, lpm_trie::LpmTrie},
};

/// Written by the agent: which (port, address prefix) pairs are targets.
#[map(name = "TARGETS")]
pub static TARGETS: LpmTrie<TargetKey, TargetValue> = LpmTrie::with_max_entries(MAX_TARGETS, 0);

/// Written by the agent: listener addresses and the bypass mark.
#[map(name = "SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Written by connect4/6, keyed by socket cookie; moved to BY_PEER by sock_ops.
#[map(name = "PENDING")]
pub static PENDING: LruHashMap<u64, ConnMeta> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Written by sock_ops, keyed by the client's (address, port); read and deleted by the agent.
#[map(name = "BY_PEER")]
pub static BY_PEER: LruHashMap<PeerKey, ConnMeta> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// Written by connect4/6, keyed by socket cookie; read by getpeername4/6 so a redirected
/// client still sees the address it dialled; deleted by sock_release.
#[map(name = "ORIG_DST")]
pub static ORIG_DST: LruHashMap<u64, OrigDst> = LruHashMap::with_max_entries(MAX_PENDING, 0);

/// In-kernel L4 relay (relay.rs). The sizes here are placeholders: the agent sets all three
/// from its connection cap at load time. Written by the agent only.
///
/// Sockets whose incoming data the verdict program redirects (the program is attached to
/// this map). A socket leaves it while its direction is paused for back-pressure.
#[map(name = "RELAY_ON")]
pub static RELAY_ON: SockHash<u64> = SockHash::with_max_entries(2, 0);

/// Every socket of a relayed connection, keyed by socket cookie: the redirect targets.
#[map(name = "RELAY_SOCKS")]
pub static RELAY_SOCKS: SockHash<u64> = SockHash::with_max_entries(2, 0);

/// Socket cookie -> the other socket of the same connection, and the bytes redirected.
#[map(name = "RELAY_PEER")]
pub static RELAY_PEER: HashMap<u64, RelayPeer> = HashMap::with_max_entries(2, BPF_F_NO_PREALLOC);

/// Cookies of relayed sockets whose redirected bytes passed a wake mark: the agent's relay
/// task cannot see redirected data any other way (the socket is never readable).
#[map(name = "RELAY_WAKE")]
pub static RELAY_WAKE: RingBuf = RingBuf::with_byte_size(RELAY_WAKE_BYTES, 0);

/// Written by the agent: network namespaces (by netns cookie) that have a listener of their
/// own. A target connection from any other namespace but the agent's is not redirected.
#[map(name = "NETNS_READY")]
pub static NETNS_READY: HashMap<u64, u32> = HashMap::with_max_entries(MAX_NETNS, 0);

/// Written by connect4/6: netns cookie -> a tgid seen connecting to a target from that
/// namespace before it was ready. The agent polls it, opens the namespace through
/// /proc/<tgid>/ns/net and deletes the entry once it is served (or refused).
#[map(name = "NETNS_SEEN")]
pub static NETNS_SEEN: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_NETNS, 0);

/// Written by connect4/6 when a namespace first lands in NETNS_SEEN: its cookie, so the
/// agent prepares it at once instead of at its next poll. A full buffer loses the note; the
/// agent's poll (every second) still finds the NETNS_SEEN entry.
#[map(name = "NETNS_WAKE")]
pub static NETNS_WAKE: RingBuf = RingBuf::with_byte_size(NETNS_WAKE_BYTES, 0);

#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs do not migrate CPUs while running.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}
