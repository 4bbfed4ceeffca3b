//! funksvd: distributed FunkSVD training over MPI, from clickstream data on local disk or S3.
//!
//! The binary (`src/main.rs`) is the product; this library exposes its pieces so that the
//! integration tests, the examples and later commands can use them. The layers, bottom up
//! (docs/DESIGN.md "Layers"; `tests/layout.rs` checks them):
//!
//! - plain data and helpers: `error`, `ids`, `rng`, `wire`, `metrics`, `prefetch`, `input`,
//!   `ratings`, `fault`, `memory`, `interrupt`;
//! - the model core `mf` (parameters, kernel, prediction, `Model`, model and checkpoint
//!   formats): no MPI, no async runtime, no command line, no storage;
//! - the two leaves that talk to the outside: `comm` (MPI, behind the `collective::Collective`
//!   trait) and `store` (local files and S3, async with a blocking shim);
//! - the pipeline, in order: `plan` (who reads what) -> `ingest` (read a slice) -> `features`
//!   (events to ratings) -> `exchange` (ratings to their user's rank) -> `train` (the trainer,
//!   over a `Collective`) -> `model_io` (publish);
//! - `serve`, the HTTP server (no MPI) over `model_io` and the model core;
//! - `cli` and `cmd`, the commands.
//!
//! ```
//! use funksvd::mf::kernel::{sgd_step, Step, LANES};
//! // One SGD step on a user row and an item row, each [bias, factors..., zero padding]
//! // (a whole number of LANES floats).
//! let mut user = vec![0.0; LANES];
//! let mut item = vec![0.0; LANES];
//! user[1..3].copy_from_slice(&[0.1, -0.2]);
//! item[1..3].copy_from_slice(&[0.3, 0.1]);
//! let err = sgd_step(&mut user, &mut item, 1.0, Step { lr: 0.01, reg: 0.02, biased: true });
//! assert!(err > 0.9 && user[0] > 0.0);
//! ```

pub mod cli;
pub mod cmd;
pub mod collective;
pub mod comm;
pub mod error;
pub mod exchange;
pub mod fault;
pub mod features;
pub mod id_list;
pub mod ids;
pub mod ingest;
pub mod input;
pub mod interrupt;
pub mod memory;
pub mod metrics;
pub mod mf;
pub mod model_io;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod plot;
pub mod prefetch;
pub mod progress;
pub mod ranking;
pub mod ratings;
pub mod recommend;
pub mod rng;
pub mod serve;
pub mod store;
pub mod times;
pub mod train;
pub mod tune;
pub mod watchdog;
pub mod wire;
