//! Loading the eBPF object, attaching it to a cgroup, and pinning the links so a restart
//! replaces them instead of stacking copies.
use std::{
    fs,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
};

use agent_common::{Settings, names};
use aya::{
    Ebpf,
    maps::{Array, SockHash},
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, SkSkb, SockOps,
        links::{FdLink, PinnedLink},
    },
};

use super::{Error, Maps, cgroup};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

#[derive(Clone, Copy)]
enum Kind {
    SockAddr,
    SockOps,
    Sock,
}

/// Every program: pin file name inside the pin directory, program name, program type.
const PROGRAMS: [(&str, &str, Kind); 6] = [
    ("connect4", names::CONNECT4, Kind::SockAddr),
    ("connect6", names::CONNECT6, Kind::SockAddr),
    ("getpeername4", names::GETPEERNAME4, Kind::SockAddr),
    ("getpeername6", names::GETPEERNAME6, Kind::SockAddr),
    ("sockops", names::SOCKOPS, Kind::SockOps),
    ("sock_release", names::SOCK_RELEASE, Kind::Sock),
];

/// The loaded object and, once attached, its pinned links.
pub struct Loaded {
    ebpf: Ebpf,
    links: Vec<PinnedLink>,
    /// Until the namespace manager takes them.
    pub(super) netns: Option<super::NetnsMaps>,
}

/// `relay_entries` sizes the kernel relay's maps (sockets, two per connection).
pub(super) fn load(settings: Settings, relay_entries: u32) -> Result<(Loaded, Maps), Error> {
    if OBJECT.is_empty() {
        return Err(Error::NoObject);
    }
    let mut ebpf = open_object_sized(relay_entries)?;
    match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => spawn_logger(logger),
        Err(e) => tracing::warn!(error = %e, "eBPF log forwarding unavailable"),
    }
    let mut settings_map: Array<_, Settings> = take(&mut ebpf, names::SETTINGS)?;
    settings_map
        .set(0, settings, 0)
        .map_err(|source| Error::Map {
            name: names::SETTINGS,
            source,
        })?;
    let targets = take(&mut ebpf, names::TARGETS)?;
    let by_peer = take(&mut ebpf, names::BY_PEER)?;
    let stats = take(&mut ebpf, names::STATS)?;
    let netns = super::NetnsMaps {
        ready: take(&mut ebpf, names::NETNS_READY)?,
        seen: take(&mut ebpf, names::NETNS_SEEN)?,
        wake: take(&mut ebpf, names::NETNS_WAKE)?,
    };
    Ok((
        Loaded {
            ebpf,
            links: Vec::new(),
            netns: Some(netns),
        },
        Maps::new(targets, by_peer, stats, settings_map),
    ))
}

/// Loads the object without the kernel's BTF: the programs use no CO-RE relocations, and
/// relocating against /sys/kernel/btf/vmlinux costs ~10 MiB of heap more (the agent's idle
/// RSS went from 21 MiB to a third of that).
///
/// `EbpfLoader::new()` still reads and parses vmlinux's BTF (aya 0.14 does it in the
/// constructor, before `.btf(None)` can say no): a one-off peak of ~10 MiB (a 5.5 MiB read
/// and ~40k small allocations), all freed when this returns. That read raises glibc's
/// dynamic mmap and trim thresholds, so the ~2 MiB of the parse that landed on the heap
/// would stay resident for the agent's whole life though nothing uses it; hand it back.
fn open_object() -> Result<Ebpf, Error> {
    open_object_sized(2)
}

fn open_object_sized(relay_entries: u32) -> Result<Ebpf, Error> {
    let ebpf = aya::EbpfLoader::new()
        .btf(None)
        .map_max_entries(names::RELAY_ON, relay_entries)
        .map_max_entries(names::RELAY_SOCKS, relay_entries)
        .map_max_entries(names::RELAY_PEER, relay_entries)
        .load(OBJECT)?;
    release_free_heap();
    Ok(ebpf)
}

/// Loads the kernel relay's verdict program and attaches it to RELAY_ON. The attachment
/// lives as long as the loaded object (the agent): nothing is pinned, since a relayed
/// connection never outlives the agent that owns its sockets.
pub(super) fn load_relay(
    loaded: &mut Loaded,
    capacity: usize,
    max_queue: u64,
) -> Result<crate::relay::KernelRelay, Error> {
    let on: SockHash<_, u64> = take(&mut loaded.ebpf, names::RELAY_ON)?;
    let socks: SockHash<_, u64> = take(&mut loaded.ebpf, names::RELAY_SOCKS)?;
    let peer = take(&mut loaded.ebpf, names::RELAY_PEER)?;
    let ring: aya::maps::RingBuf<_> = take(&mut loaded.ebpf, names::RELAY_WAKE)?;
    let name = names::RELAY;
    let program: &mut SkSkb = loaded
        .ebpf
        .program_mut(name)
        .ok_or(Error::MissingProgram(name))?
        .try_into()
        .map_err(|source| Error::Program { name, source })?;
    program
        .load()
        .map_err(|source| Error::Program { name, source })?;
    program
        .attach(on.fd())
        .map_err(|source| Error::Program { name, source })?;
    let relay = crate::relay::KernelRelay::new(
        crate::relay::table::Maps {
            on,
            socks,
            peer,
            wake_every: crate::relay::wake_every(max_queue),
        },
        capacity,
        max_queue,
    );
    crate::relay::wake::spawn(ring, relay.wakers()).map_err(Error::Thread)?;
    Ok(relay)
}

/// Returns the allocator's free memory to the kernel. Only free pages are given back: live
/// data is never touched, and nothing on the request path calls this.
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Takes a map out of the object as its typed handle.
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Attaches all programs to `cgroup_dir`, then swaps them in for whatever an earlier agent
/// pinned in `pin_dir`. New links are attached before old ones are removed, so at no moment
/// is a target connection left unredirected.
pub(super) fn attach(
    mut loaded: Loaded,
    cgroup_dir: &Path,
    pin_dir: &Path,
) -> Result<Loaded, Error> {
    let cgroup = fs::File::open(cgroup_dir).map_err(|e| {
        Error::Cgroup(cgroup::Error::Missing {
            path: cgroup_dir.to_path_buf(),
            mount: PathBuf::from(e.to_string()),
        })
    })?;
    let mut fresh: Vec<(&str, FdLink)> = Vec::with_capacity(PROGRAMS.len());
    for (file, prog_name, kind) in PROGRAMS {
        let program = loaded
            .ebpf
            .program_mut(prog_name)
            .ok_or(Error::MissingProgram(prog_name))?;
        let link = load_program(program, prog_name, kind, Some(&cgroup))?
            .ok_or(Error::MissingProgram(prog_name))?;
        fresh.push((file, link));
    }
    ensure_pin_dir(pin_dir)?;
    let replaced = detach_pinned(pin_dir)?;
    if replaced > 0 {
        tracing::info!(replaced, pin_dir = %pin_dir.display(), "replaced links pinned by a previous agent");
    }
    for (file, link) in fresh {
        let path = pin_dir.join(file);
        let pinned = link.pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            message: e.to_string(),
        })?;
        loaded.links.push(pinned);
    }
    Ok(loaded)
}

/// Removes this agent's pinned links, detaching their programs. Returns how many there were.
pub fn detach_pinned(pin_dir: &Path) -> Result<usize, Error> {
    let mut n = 0;
    for path in pinned_links(pin_dir) {
        let link = PinnedLink::from_pin(&path).map_err(|e| Error::Pin {
            path: path.clone(),
            message: e.to_string(),
        })?;
        // Unpinning drops the last reference once `link` goes out of scope: detached.
        link.unpin().map_err(|e| Error::Pin {
            path: path.clone(),
            message: e.to_string(),
        })?;
        n += 1;
    }
    Ok(n)
}

/// Removes the pin directory once it is empty (after a final detach).
pub fn remove_pin_dir(pin_dir: &Path) {
    if pinned_links(pin_dir).is_empty() {
        let _ = fs::remove_dir(pin_dir);
    }
}

/// Pinned link files present in `pin_dir`.
pub fn pinned_links(pin_dir: &Path) -> Vec<PathBuf> {
    PROGRAMS
        .iter()
        .map(|(file, _, _)| pin_dir.join(file))
        .filter(|p| p.exists())
        .collect()
}

fn ensure_pin_dir(pin_dir: &Path) -> Result<(), Error> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| Error::Bpffs(format!("cannot read /proc/mounts: {e}")))?;
    let on_bpffs = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[2] == "bpf" && pin_dir.starts_with(f[1])
    });
    if !on_bpffs {
        let default_mount = Path::new("/sys/fs/bpf");
        if !pin_dir.starts_with(default_mount) {
            return Err(Error::Bpffs(format!(
                "pin_dir {} is not on a bpf filesystem; mount one there (`mount -t bpf bpf DIR`) or use /sys/fs/bpf/...",
                pin_dir.display()
            )));
        }
        nix::mount::mount(
            Some("bpf"),
            default_mount,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::Bpffs(format!("mounting bpffs at /sys/fs/bpf: {e}")))?;
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    fs::create_dir_all(pin_dir).map_err(|e| Error::Pin {
        path: pin_dir.to_path_buf(),
        message: e.to_string(),
    })?;
    // Refuse to pin next to something that is not ours.
    for entry in fs::read_dir(pin_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let ours = PROGRAMS.iter().any(|(f, _, _)| name == *f);
        if !ours
            && entry
                .file_type()
                .is_ok_and(|t| !t.is_dir() && !t.is_socket())
        {
            tracing::warn!(file = %entry.path().display(), "unexpected file in pin_dir");
        }
    }
    Ok(())
}

fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the ring buffer fd is owned by `logger`, which the AsyncFd owns for its whole
    // life, and `as_raw_fd` always returns that same fd.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF log forwarding unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        let mut fd = fd;
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// Loads every program into the kernel (verifier included) without attaching anything.
pub fn probe_load() -> Result<(), Error> {
    if OBJECT.is_empty() {
        return Err(Error::NoObject);
    }
    let mut ebpf = open_object()?;
    for (_, prog_name, kind) in PROGRAMS {
        let program = ebpf
            .program_mut(prog_name)
            .ok_or(Error::MissingProgram(prog_name))?;
        load_program(program, prog_name, kind, None)?;
    }
    Ok(())
}

/// Loads one program (verifier included) and, given a cgroup, attaches it and returns the
/// link. bpf_link-based cgroup attachment (kernel >= 5.7) always allows multiple programs;
/// the mode flag must be 0 there, which aya spells `Single`.
fn load_program(
    program: &mut aya::programs::Program,
    name: &'static str,
    kind: Kind,
    cgroup: Option<&fs::File>,
) -> Result<Option<FdLink>, Error> {
    let prog_err = |source| Error::Program { name, source };
    let link_err = |source| Error::Link { name, source };
    macro_rules! load_attach {
        ($ty:ty) => {{
            let p: &mut $ty = program.try_into().map_err(prog_err)?;
            p.load().map_err(prog_err)?;
            match cgroup {
                None => None,
                Some(cg) => {
                    let id = p.attach(cg, CgroupAttachMode::Single).map_err(prog_err)?;
                    Some(FdLink::try_from(p.take_link(id).map_err(prog_err)?).map_err(link_err)?)
                }
            }
        }};
    }
    Ok(match kind {
        Kind::SockAddr => load_attach!(CgroupSockAddr),
        Kind::SockOps => load_attach!(SockOps),
        Kind::Sock => load_attach!(CgroupSock),
    })
}
