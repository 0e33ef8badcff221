//! Keeps the agent's resident code to what it runs.
//!
//! Most of the agent's idle RSS is not its heap (~1.5 MiB) but pages of its own executable
//! (~8 MiB of 11): on a page fault the kernel maps the neighbouring pages of the file too
//! ("fault-around", 64 KiB), so code that never runs — the other servers' adapters, the CLI,
//! error paths — becomes resident next to code that does, and the one-off start-up work
//! (loading the eBPF programs, parsing the config and the policy packs) stays mapped for
//! the life of the process.
//!
//! Once the agent is serving, `trim_code` asks the kernel to fault file pages in page by
//! page (`MADV_RANDOM`) and drops the pages mapped so far (`MADV_DONTNEED`): they stay in the
//! page cache, and those the running agent uses come back on their first use (a minor fault,
//! from memory). Only mappings that were never written are touched — the executable's code
//! and read-only data, and the shared libraries' — so dropping them loses nothing; a written
//! private mapping, such as the relocated read-only data (RELRO), holds anonymous copies of
//! its pages and would lose its relocations, so it is left alone. The allocator then returns
//! what start-up freed (`malloc_trim`).
//!
//! Written by hand: no crate offers this; it is two `madvise` calls per mapping.
#![allow(unsafe_code)]

/// Applies the above to every file-backed mapping that was never written (the executable's
/// code and read-only data, and the shared libraries'), then hands the heap's free pages back
/// to the kernel. Best effort: a failure leaves the process as it was.
pub fn trim_code() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    let mut dropped = 0usize;
    for (start, end) in clean_file_ranges(&smaps) {
        let len = end - start;
        // SAFETY: [start, end) is a whole mapping of this process, read from
        // /proc/self/smaps: file-backed, private, not writable and without one anonymous
        // (copied-on-write) page, so every page equals the file's and the kernel re-reads
        // dropped ones unchanged; both advices only change paging.
        unsafe {
            let addr = start as *mut libc::c_void;
            libc::madvise(addr, len, libc::MADV_RANDOM);
            if libc::madvise(addr, len, libc::MADV_DONTNEED) == 0 {
                dropped += len;
            }
        }
    }
    // Loading the policy packs and compiling their matchers peaks several MiB above what
    // the agent keeps; glibc holds freed pages for reuse unless asked to return them.
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(bytes = dropped, "clean file pages dropped after start");
}

/// The mappings of a `/proc/<pid>/smaps` text that can be dropped: private (`p`), not
/// writable, backed by a file (a path), and with no anonymous pages. The last test is what
/// keeps the relocated read-only data (RELRO: written by the loader, then made read-only)
/// out: its written pages are anonymous copies, which dropping would lose.
fn clean_file_ranges(smaps: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    // The mapping being read: its range, if its header qualified.
    let mut current: Option<(usize, usize)> = None;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Anonymous:") {
            let anon = rest.trim().trim_end_matches("kB").trim();
            if let Some(range) = current.take()
                && anon == "0"
            {
                out.push(range);
            }
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            // A field line ("Rss:   12 kB"), not a mapping header.
            continue;
        };
        // offset, device, inode, then the path (which may hold spaces).
        let path = f.skip(3).collect::<Vec<_>>().join(" ");
        let perms = perms.as_bytes();
        let qualifies = perms.len() == 4
            && perms[0] == b'r'
            && perms[1] == b'-'
            && perms[3] == b'p'
            && path.starts_with('/')
            && !path.ends_with(" (deleted)")
            && a < b;
        current = qualifies.then_some((a, b));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unwritten_file_mappings_are_chosen() {
        let smaps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 42 /usr/bin/sluice
Rss:                 100 kB
Anonymous:             0 kB
55d0a0100000-55d0a0800000 r-xp 00100000 fd:01 42 /usr/bin/sluice
Anonymous:             0 kB
55d0a0800000-55d0a0900000 r--p 00800000 fd:01 42 /usr/bin/sluice
Anonymous:           460 kB
55d0a0900000-55d0a0910000 rw-p 00900000 fd:01 42 /usr/bin/sluice
Anonymous:             0 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Anonymous:             0 kB
7f0000400000-7f0000500000 r--s 00001000 00:0e 9 anon_inode:bpf-map
Anonymous:             0 kB
7f0000300000-7f0000301000 r-xp 00000000 fd:01 43 /usr/bin/sluice (deleted)
Anonymous:             0 kB
7f0000600000-7f0000601000 r-xp 00000000 fd:01 43 /usr/bin/no anonymous line
garbage line
";
        assert_eq!(
            clean_file_ranges(smaps),
            vec![
                (0x55d0a0000000, 0x55d0a0100000),
                (0x55d0a0100000, 0x55d0a0800000),
                (0x7f0000000000, 0x7f0000100000),
            ]
        );
    }

    #[test]
    fn trimming_the_running_test_binary_leaves_it_working() {
        trim_code();
        // Code runs again after its pages were dropped (they fault back in).
        assert_eq!(clean_file_ranges(""), Vec::new());
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
    }
}
