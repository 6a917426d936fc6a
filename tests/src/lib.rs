//! End-to-end tests across crates: the embedded cluster driven by real clients.
