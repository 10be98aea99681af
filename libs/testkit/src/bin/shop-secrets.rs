//! `shop-secrets DIR`: mints every Secret the k8s manifests reference and
//! do not create (`k8s/secrets.provided.txt`) into `DIR/<secret>/<key>`, for
//! `just kind-up` to load with `kubectl create secret generic --from-file`.
//! Fresh keys, passwords and a fresh CA each time: a kind cluster's own.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: shop-secrets DIR");
        return ExitCode::from(2);
    };
    match shop_testkit::secrets::Secrets::mint(std::path::Path::new(&dir)) {
        Ok(secrets) => {
            for name in secrets.names().unwrap_or_default() {
                println!("{dir}/{name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shop-secrets: {e:#}");
            ExitCode::FAILURE
        }
    }
}
