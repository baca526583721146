//! # walspool-monitor
//!
//! The `walspool` command: `demo`, `top` (a live dashboard of every WAL under a root),
//! `status`, `dump` and `verify`. It reads a WAL directory from the outside: the stats file the writer
//! publishes, and the files themselves (through `walspool_wal::inspect`), so it works
//! while the writer runs and after it died.
//!
//! The dashboard keeps state, events and view apart: collectors ([`collect`], which
//! only read WAL directories) run on a thread that [`tui`] starts; that thread and the
//! terminal send one [`app::Event`] enum over one channel, a plain [`app::App`] is
//! updated from it, and [`view::render`] draws the `App`. Dependencies go one way:
//! `tui` → `app` → `collect`.

pub mod app;
pub mod cli;
pub mod collect;
pub mod demo;
pub mod fleet;
pub mod fmt;
pub mod tui;
pub mod view;

#[cfg(test)]
mod render_tests;
