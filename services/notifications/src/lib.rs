//! The notifications service (in progress).
