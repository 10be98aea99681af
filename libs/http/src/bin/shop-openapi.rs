//! `shop-openapi write DIR` writes the OpenAPI document of every service of
//! the shop's contracts into DIR; `shop-openapi check DIR` fails when DIR
//! differs from them (`just openapi` runs it on `docs/openapi`).

use shop_http::openapi::shop;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage: shop-openapi write DIR | shop-openapi check DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, dir) = match args.as_slice() {
        [command, dir] => (command.as_str(), Path::new(dir)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        "write" => shop::write(dir).map(|written| {
            println!("wrote {} documents into {}", written.len(), dir.display());
            ExitCode::SUCCESS
        }),
        "check" => shop::check(dir).map(|drift| report(dir, &drift)),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    result.unwrap_or_else(|error| {
        eprintln!("shop-openapi: {error}");
        ExitCode::FAILURE
    })
}

/// Lists what differs; the exit status says whether anything does.
fn report(dir: &Path, drift: &[shop::Drift]) -> ExitCode {
    if drift.is_empty() {
        println!(
            "{}: every OpenAPI document matches the contracts",
            dir.display()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "{}: the OpenAPI documents are not those of the contracts:",
        dir.display()
    );
    for d in drift {
        eprintln!("  {d}");
    }
    eprintln!(
        "regenerate them with: cargo run -q -p shop-http --bin shop-openapi -- write {}",
        dir.display()
    );
    ExitCode::FAILURE
}
