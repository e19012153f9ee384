//! Datacenter segment placement simulator.
//!
//! Tests the claim behind Compromis (Teabe et al., VEE 2021) that almost every VM can get
//! all its memory as one contiguous host-physical segment, and what it costs when it cannot
//! (compaction, self-ballooning, escape filters; Gandhi et al.). One job per module:
//!
//! - [`size`]: byte sizes as users write them; [`rng`]: the seeded generator.
//! - [`host`]: one host's free extents and segments; [`cluster`]: hosts and host indexes.
//! - [`workload`]: the common VM-request shape; [`azure_flavors`], [`vmtable`] and
//!   [`synthetic`]: the three workload sources.
//! - [`policy`]: host and extent policies; [`sim`]: the event-driven simulator.
//! - [`results`]: report, JSON and table; [`plot`]: SVG plots.

pub mod azure_flavors;
pub mod batch;
pub mod cluster;
pub mod host;
pub mod plot;
pub mod policy;
pub mod results;
pub mod rng;
pub mod sim;
pub mod size;
pub mod synthetic;
pub mod vmtable;
pub mod workload;

pub use cluster::ClusterSpec;
pub use policy::{ExtentPolicy, Fit, HostPolicy, Mode};
pub use results::Report;
pub use sim::{simulate, Config, Simulator};
pub use workload::{VmRequest, Workload};
