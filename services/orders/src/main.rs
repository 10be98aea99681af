//! `orders`.

fn main() {}
