//! `analytics`.

fn main() {}
