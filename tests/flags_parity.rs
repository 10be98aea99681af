//! Percentage rollouts bucket users as flagd does: for 10,000 targeting
//! keys at 20%, every key's variant from libs/flags (flagd's Rust
//! evaluation engine) is the one the Python flagd OpenFeature provider
//! (openfeature-provider-flagd, pinned by the bootstrap, in file mode)
//! gives for the same file. Compared key by key, not as a tally.

use shop_flags::{FlagSettings, Flags};
use shop_testkit::tools;
use std::process::Command;

const FLAGS: &str = r#"{
  "$schema": "https://flagd.dev/schema/v0/flags.json",
  "flags": {
    "checkout.rollout": {
      "state": "ENABLED",
      "variants": {"on": "on", "off": "off"},
      "defaultVariant": "off",
      "targeting": {"fractional": [["on", 20], ["off", 80]]}
    },
    "checkout.by-key": {
      "state": "ENABLED",
      "variants": {"on": "on", "off": "off"},
      "defaultVariant": "off",
      "targeting": {"fractional": [{"var": "targetingKey"}, ["on", 20], ["off", 80]]}
    },
    "checkout.three-ways": {
      "state": "ENABLED",
      "variants": {"a": "a", "b": "b", "c": "c"},
      "defaultVariant": "a",
      "targeting": {"fractional": [{"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]}, ["a", 20], ["b", 30], ["c", 50]]}
    }
  }
}"#;

/// 10,000 keys: user ids as the gateway passes them (UUIDs), and short
/// names.
fn keys() -> Vec<String> {
    (0..10_000u64)
        .map(|i| {
            if i % 2 == 0 {
                uuid::Uuid::from_u64_pair(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i).to_string()
            } else {
                format!("user-{i}")
            }
        })
        .collect()
}

#[tokio::test]
async fn fractional_buckets_agree_with_the_python_flagd_provider_for_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flags.json");
    std::fs::write(&file, FLAGS).unwrap();
    let keys = keys();
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n")).unwrap();
    let flags = Flags::load(&FlagSettings {
        files: vec![file.clone()],
        ..FlagSettings::default()
    })
    .await
    .unwrap();
    let python = tools::repo_root().join(".tools/bin/flagd-python");
    assert!(
        python.is_file(),
        "{} is missing: run `just bootstrap`",
        python.display()
    );
    for (flag, share) in [
        ("checkout.rollout", ("on", 0.20)),
        ("checkout.by-key", ("on", 0.20)),
        ("checkout.three-ways", ("c", 0.50)),
    ] {
        let out = Command::new(&python)
            .arg(tools::repo_root().join("tests/flags/buckets.py"))
            .arg(&file)
            .arg(flag)
            .arg(&keys_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "buckets.py {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let theirs: Vec<(&str, &str)> = stdout
            .lines()
            .map(|l| {
                let mut f = l.split('\t');
                (f.next().unwrap(), f.next().unwrap())
            })
            .collect();
        assert_eq!(theirs.len(), keys.len(), "{flag}: one line per key");
        let mut disagree = Vec::new();
        let mut in_share = 0usize;
        for (key, (their_key, their_variant)) in keys.iter().zip(&theirs) {
            assert_eq!(key, their_key);
            let ours = flags.explain(flag, &shop_flags::user(key.clone()));
            let value = flags
                .string(flag, "fallback", &shop_flags::user(key.clone()))
                .await;
            assert_eq!(
                ours.variant.as_deref(),
                Some(value.as_str()),
                "{flag} {key}"
            );
            if value != *their_variant {
                disagree.push(format!("{key}: ours {value}, flagd's {their_variant}"));
            }
            in_share += usize::from(value == share.0);
        }
        assert!(
            disagree.is_empty(),
            "{flag}: {} of {} keys disagree, e.g. {:?}",
            disagree.len(),
            keys.len(),
            &disagree[..disagree.len().min(5)]
        );
        #[allow(clippy::cast_precision_loss)]
        let fraction = in_share as f64 / keys.len() as f64;
        println!(
            "{flag}: all {} keys agree; {:.1}% {}",
            keys.len(),
            100.0 * fraction,
            share.0
        );
        assert!((fraction - share.1).abs() < 0.02, "{flag}: {fraction}");
    }
}
