//! Archival of sealed segments to object storage (see issue 5).
