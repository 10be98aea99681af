//! The payments service (in progress).
