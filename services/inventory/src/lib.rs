//! The inventory service (in progress).
