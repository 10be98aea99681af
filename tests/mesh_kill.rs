//! A replica `kill -9`ed under steady load: after the first second no caller
//! sees an error. Its own test binary, so no other suite loads the machine
//! while it measures.

mod common;

use common::mesh::{Mesh, load};
use std::time::Duration;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_costs_no_error_after_the_first_second() {
    let mesh = Mesh::start(vec![]).await;

    let killer = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // kill -9; the process is reaped when the stack is dropped.
        mesh.stack
            .service("catalog-2")
            .signal(nix::sys::signal::Signal::SIGKILL)
            .unwrap();
    };
    let (outcomes, _) = tokio::join!(load(&mesh, 4, Duration::from_secs(7), 10_000), killer);

    let killed_at = Duration::from_secs(2);
    let before: Vec<_> = outcomes.iter().filter(|o| o.at < killed_at).collect();
    let after: Vec<_> = outcomes
        .iter()
        .filter(|o| o.at >= killed_at + Duration::from_secs(1))
        .collect();
    assert!(before.iter().all(|o| o.code == Code::Ok), "{before:?}");
    assert!(
        after.len() > 50,
        "steady load after the kill: {}",
        after.len()
    );
    let errors: Vec<_> = after.iter().filter(|o| o.code != Code::Ok).collect();
    assert!(
        errors.is_empty(),
        "errors after the first second: {errors:?}"
    );
}
