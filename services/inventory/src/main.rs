//! `inventory`.

fn main() {}
