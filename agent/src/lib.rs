//! Sluice: a node agent between workloads and the AI model servers they call.
//!
//! Modules in the order a connection meets them:
//! `config` → `intercept` (eBPF redirect, listener, original destination) → `workload`
//! (who called) → `upstream` (where it goes) → `forward` (bytes both ways) via `l4`;
//! `admin` shows what is live, `drain` stops it all, `doctor` checks the host, `app` wires it.
pub mod admin;
pub mod app;
pub mod config;
pub mod doctor;
pub mod drain;
pub mod forward;
pub mod intercept;
pub mod l4;
pub mod upstream;
pub mod workload;
