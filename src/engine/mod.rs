//! The scoring engine (being written).
