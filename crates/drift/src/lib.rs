//! Drift detection and canary statistics. Pure: no I/O. The server feeds monitors the
//! inference log and feedback and turns the readings that start firing into governed
//! `drift.detected` / `feedback.degraded` events; canary analysis uses the same tests.

mod monitor;
pub mod stats;
pub mod text;

pub use monitor::{FeedbackMonitor, Monitor, Observation, Reading, Reference, Settings, Slo};

#[cfg(test)]
mod tests;
