//! At-least-once delivery of a consumer's records to a sink (see issue 4).
