//! The orders service (in progress).
