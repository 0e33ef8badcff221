//! Sluice: a node agent between workloads and the AI model servers they call.
//!
//! A connection's path through the modules:
//! `intercept` (eBPF redirect, listener, original destination) → `connection` (attribute,
//! `workload` identity) → either `forward` (layer 4 relay) or `http` → `pipeline`, which runs
//! `adapter` (classify) → `policy` (decide) → `upstream` (send) → `respond` (refusals).
//! `config` reads the agent's file, `admin` shows what is live, `drain` stops it all,
//! `doctor` checks the host, `app` wires everything together; `yaml` places YAML errors.
// unsafe is confined to the kernel boundary (intercept/: eBPF loading, fd registration;
// relay/sock.rs: TCP_INFO, socket cookie and queue ioctls; workload/cgroup.rs:
// open_by_handle_at; memory.rs: madvise on the executable's code).
#![deny(unsafe_code)]

pub mod adapter;
pub mod admin;
pub mod app;
pub mod approval;
pub mod audit;
pub mod config;
pub mod connection;
pub mod custody;
pub mod doctor;
pub mod drain;
pub mod filter;
pub mod forward;
pub mod http;
pub mod identity;
#[allow(unsafe_code)]
pub mod intercept;
pub mod json_text;
pub mod limits;
pub mod logging;
pub mod mask;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod record;
pub mod relay;
pub mod respond;
pub mod tls;
pub mod upstream;
pub mod wire;
pub mod workload;
mod yaml;
