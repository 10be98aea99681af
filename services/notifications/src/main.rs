//! `notifications`.

fn main() {}
