// The library target exists only so `agent` can name this crate as a build dependency and be
// rebuilt when it changes (see aya-build). The programs are in the `sluice-ebpf` binary.
#![no_std]
