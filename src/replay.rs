//! Replay (being written).
