//! A validating, borrowing JSON scanner (being written).
