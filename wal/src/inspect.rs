//! Read-only inspection of a WAL that may belong to another process: checkpoints,
//! segment scans for `dump` and `verify`.
