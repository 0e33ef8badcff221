//! Keeps the agent's resident code to what it runs.
//!
//! Most of the agent's idle RSS is not its heap (~1.5 MiB) but pages of its own executable
//! (~8 MiB of 11): on a page fault the kernel maps the neighbouring pages of the file too
//! ("fault-around", 64 KiB), so code that never runs — the other servers' adapters, the CLI,
//! error paths — becomes resident next to code that does, and the one-off start-up work
//! (loading the eBPF programs, parsing the config and the policy packs) stays mapped for
//! the life of the process.
//!
//! Once the agent is serving, `trim_code` asks the kernel to fault the executable's code in
//! page by page (`MADV_RANDOM`) and drops the pages mapped so far (`MADV_DONTNEED`): they
//! stay in the page cache, and those the running agent uses come back on their first use
//! (a minor fault, from memory). Only the executable's `r-xp` mappings are touched: they are
//! never written, so dropping them loses nothing (a written private mapping, such as the
//! relocated read-only data, would lose its relocations and must not be dropped).
//!
//! Written by hand: no crate offers this; it is two `madvise` calls per mapping.
#![allow(unsafe_code)]

/// Applies the above to every executable mapping of `/proc/self/exe`. Best effort: a
/// failure leaves the process as it was.
pub fn trim_code() {
    let (Ok(maps), Ok(exe)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::read_link("/proc/self/exe"),
    ) else {
        return;
    };
    let Some(exe) = exe.to_str() else { return };
    let mut dropped = 0usize;
    for (start, end) in code_ranges(&maps, exe) {
        let len = end - start;
        // SAFETY: [start, end) is a whole mapping of this process, read from
        // /proc/self/maps, read-only and executable (never written), so the kernel re-reads
        // dropped pages from the file unchanged; both advices only change paging.
        unsafe {
            let addr = start as *mut libc::c_void;
            libc::madvise(addr, len, libc::MADV_RANDOM);
            if libc::madvise(addr, len, libc::MADV_DONTNEED) == 0 {
                dropped += len;
            }
        }
    }
    tracing::debug!(bytes = dropped, "executable code pages dropped after start");
}

/// The `r-xp` mappings of `exe` in a `/proc/<pid>/maps` text.
fn code_ranges(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            // offset, device, inode, then the path (which may hold spaces).
            let path = f.skip(3).collect::<Vec<_>>().join(" ");
            if perms != "r-xp" || path != exe {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a < b).then_some((a, b))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_code_mappings_are_chosen() {
        let maps = "\
55d0a0000000-55d0a0100000 r--p 00000000 fd:01 42 /usr/bin/sluice
55d0a0100000-55d0a0800000 r-xp 00100000 fd:01 42 /usr/bin/sluice
55d0a0800000-55d0a0900000 r--p 00800000 fd:01 42 /usr/bin/sluice
55d0a0900000-55d0a0910000 rw-p 00900000 fd:01 42 /usr/bin/sluice
7f0000000000-7f0000100000 r-xp 00000000 fd:01 7 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
7f0000300000-7f0000301000 r-xp 00000000 fd:01 43 /usr/bin/sluice (deleted)
garbage line
";
        assert_eq!(
            code_ranges(maps, "/usr/bin/sluice"),
            vec![(0x55d0a0100000, 0x55d0a0800000)]
        );
    }

    #[test]
    fn trimming_the_running_test_binary_leaves_it_working() {
        trim_code();
        // Code runs again after its pages were dropped (they fault back in).
        assert_eq!(code_ranges("", "x"), Vec::new());
        let v: Vec<u64> = (0..1000).map(|i| i * 3).collect();
        assert_eq!(v.iter().sum::<u64>(), 1_498_500);
    }
}
