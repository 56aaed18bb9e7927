//! End-to-end tests: clusters of real `nave` processes (`nave up` as a child, see
//! [`common::Cluster`]), one module per suite, in one test binary so the workspace is
//! linked once for all of them. Each module opens with what it proves.
//!
//! `tests/otlp.rs` is a binary of its own: it points the whole process's environment at
//! its collector (`OTEL_EXPORTER_OTLP_ENDPOINT`, inherited by every child), which would
//! send the spans of every other suite's cluster there too.

#[path = "../common/mod.rs"]
mod common;

mod backup;
mod certs;
mod chaos;
mod clients_real_model;
mod cluster_tiny;
mod console;
mod crash_durability;
mod devices;
mod https;
mod hubs;
mod join;
mod limits;
mod misbehaving_spokes;
mod prometheus;
mod replicas;
mod tool_calls;
mod train;
