//! `payments`.

fn main() {}
