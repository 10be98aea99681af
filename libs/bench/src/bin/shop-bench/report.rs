//! The report of a run: medians per variant and the ratios docs/benchmarks.md quotes.

use crate::drive::{Sample, median};
use crate::{Args, METHOD};

/// The report of `samples`, per variant in the order given.
pub(crate) fn report(args: &Args, samples: &[(&str, Vec<Sample>)]) -> String {
    let mut report = String::new();
    report.push_str(&format!(
        "shop-bench mesh: {METHOD}, {} conns x {} streams, {} reps of {:?} (medians; min-max)\n",
        args.conns, args.streams, args.reps, args.duration
    ));
    report.push_str(
        "variant      req/s (min-max)            p50 us  p99 us  p99.9 us  CPU us/req  client CPU us/req  client allocs/req  errors\n",
    );
    let mut medians = std::collections::BTreeMap::new();
    for (name, list) in samples {
        if list.is_empty() {
            continue;
        }
        let (rps, lo, hi) = median(list.iter().map(|s| s.rps).collect());
        let (p50, _, _) = median(list.iter().map(|s| s.p50_us as f64).collect());
        let (p99, _, _) = median(list.iter().map(|s| s.p99_us as f64).collect());
        let (p999, _, _) = median(list.iter().map(|s| s.p999_us as f64).collect());
        let (cpu, _, _) = median(list.iter().map(|s| s.cpu_us_per_req).collect());
        let (client_cpu, _, _) = median(list.iter().map(|s| s.client_cpu_us_per_req).collect());
        let (allocs, _, _) = median(list.iter().map(|s| s.allocs_per_req).collect());
        let errors: u64 = list.iter().map(|s| s.errors).sum();
        report.push_str(&format!(
            "{name:<12} {rps:>7.0} ({lo:>7.0}-{hi:>7.0})  {p50:>8.0} {p99:>7.0} {p999:>9.0} {cpu:>11.1} {client_cpu:>18.1} {allocs:>18.1} {errors:>7}\n"
        ));
        medians.insert(*name, (rps, p99, cpu, client_cpu));
    }
    for (label, bare, mesh, sidecar) in [
        ("ratios", "bare", "mesh", "sidecar"),
        ("ratios under TLS", "bare-tls", "mesh-tls", "sidecar-tls"),
    ] {
        let (Some(a), Some(b), Some(c)) = (
            medians.get(bare).copied(),
            medians.get(mesh).copied(),
            medians.get(sidecar).copied(),
        ) else {
            continue;
        };
        report.push_str(&format!(
            "{label}: {mesh}/{bare} req/s = {:.2}; {mesh}/{sidecar} req/s = {:.2}; p99 {mesh} {:.0} us vs {sidecar} {:.0} us\n",
            b.0 / a.0,
            b.0 / c.0,
            b.1,
            c.1
        ));
    }
    for (mesh, envoy, bare) in [
        ("mesh", "envoy", "bare"),
        ("mesh-tls", "envoy-tls", "bare-tls"),
    ] {
        let (Some(m), Some(e)) = (medians.get(mesh).copied(), medians.get(envoy).copied()) else {
            continue;
        };
        // Requests per CPU second of every process: servers, proxies and
        // the client (the generator, with the mesh's client layers in it).
        let whole = |(_, _, cpu, client): (f64, f64, f64, f64)| 1e6 / (cpu + client).max(1e-9);
        // Requests per CPU second of the data plane: servers, proxies, and
        // what the client spent beyond a bare tonic client (the generator's
        // own work, the same on both paths).
        let bare_client = medians.get(bare).map_or(0.0, |b| b.3);
        let plane = |(_, _, cpu, client): (f64, f64, f64, f64)| {
            1e6 / (cpu + (client - bare_client).max(0.0)).max(1e-9)
        };
        report.push_str(&format!(
            "{mesh} vs {envoy}: req/s {:.2}x; req/s per CPU of every process {:.2}x ({:.0} vs {:.0}), of the data plane {:.2}x ({:.0} vs {:.0}); p99 {:.0} us vs {:.0} us ({:.2} of Envoy's)\n",
            m.0 / e.0,
            whole(m) / whole(e),
            whole(m),
            whole(e),
            plane(m) / plane(e),
            plane(m),
            plane(e),
            m.1,
            e.1,
            m.1 / e.1
        ));
    }
    report
}
