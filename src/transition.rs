//! Output wire format (being written).
