//! Driving one variant: streams of calls for a while, and what they cost.

use crate::allocations;
use crate::procs::cpu_seconds;
use hdrhistogram::Histogram;
use shop_proto::shop::mesh::v1::ListUpstreamsRequest;
use shop_proto::shop::mesh::v1::mesh_admin_service_client::MeshAdminServiceClient as Client;
use std::time::{Duration, Instant};

/// One measurement of one variant.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) p50_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) cpu_us_per_req: f64,
    pub(crate) client_cpu_us_per_req: f64,
    pub(crate) allocs_per_req: f64,
    pub(crate) errors: u64,
}

pub(crate) async fn drive<T>(
    clients: Vec<Client<T>>,
    streams: usize,
    duration: Duration,
    cpu_pids: &[u32],
) -> Sample
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    // Warm-up, discarded.
    let warm = Instant::now() + Duration::from_millis(500);
    let _ = run_loops(&clients, streams, warm).await;
    let cpu0: f64 = cpu_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let own0 = cpu_seconds(std::process::id());
    let allocs0 = allocations();
    let start = Instant::now();
    let (hist, ok, errors) = run_loops(&clients, streams, start + duration).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1: f64 = cpu_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let own1 = cpu_seconds(std::process::id());
    let allocs1 = allocations();
    Sample {
        rps: ok as f64 / elapsed,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        cpu_us_per_req: (cpu1 - cpu0) * 1e6 / ok.max(1) as f64,
        client_cpu_us_per_req: (own1 - own0) * 1e6 / ok.max(1) as f64,
        allocs_per_req: (allocs1 - allocs0) as f64 / ok.max(1) as f64,
        errors,
    }
}

pub(crate) async fn run_loops<T>(
    clients: &[Client<T>],
    streams: usize,
    until: Instant,
) -> (Histogram<u64>, u64, u64)
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..streams {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let (mut ok, mut errors) = (0u64, 0u64);
                while Instant::now() < until {
                    let t = Instant::now();
                    match client.list_upstreams(ListUpstreamsRequest::default()).await {
                        Ok(_) => {
                            ok += 1;
                            let _ = hist.record(t.elapsed().as_micros() as u64);
                        }
                        Err(status) => {
                            if errors == 0 && std::env::var_os("SHOP_BENCH_SHOW_ERRORS").is_some() {
                                eprintln!("first error: {status:?}");
                            }
                            errors += 1
                        }
                    }
                }
                (hist, ok, errors)
            }));
        }
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await.expect("load task");
        hist.add(h).expect("same bounds");
        ok += o;
        errors += e;
    }
    (hist, ok, errors)
}

pub(crate) fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
