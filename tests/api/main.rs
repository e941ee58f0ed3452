//! Black-box tests: the real application on port 0 against a fresh PostgreSQL
//! database or SQLite file per test. Scenarios marked with `both_backends!` run
//! once on each store.

mod helpers;

mod admin;
mod bench;
mod binary;
mod bridge;
mod browser;
mod cli;
mod consuming;
mod descriptor;
mod dev_site;
mod faults;
mod forge_app;
mod hardening;
mod lifecycle;
mod memory;
mod ops;
mod publishing;
mod rabbit;
mod receiver;
mod reconcile;
mod relay;
mod secrets;
mod sources;
mod triggers;
mod vectors;
mod webhooks;
