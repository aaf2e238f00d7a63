//! End-to-end tests: the real `factory` binary, started on port 0 in its own data directory,
//! driven over HTTP and through its CLI.
#![allow(clippy::unwrap_used)]

mod adversarial;
mod audit_tamper;
mod cluster;
mod console;
mod crash;
mod datasets;
mod demo;
mod gguf;
mod isolation;
mod lifecycle;
mod pipelines;
mod registry;
mod serving_deploy_checks;
mod serving_guardrails;
mod serving_limits;
mod serving_openai_api;
mod serving_upstream;
mod serving_variants;
mod support;
mod training;
