//! End-to-end suites live in `tests/*.rs`; this crate has no library code.
