//! The analytics service (in progress).
