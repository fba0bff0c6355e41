//! Response diff (placeholder, being written).
