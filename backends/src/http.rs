//! HTTP ingest sink (see issue 4).
