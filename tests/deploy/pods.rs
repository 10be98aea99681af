//! A pod of the rendered manifests on this machine: the ConfigMaps and
//! Secrets it mounts written out as the kubelet would (one file per key),
//! its environment and arguments resolved as the kubelet would (Secret and
//! ConfigMap keys, the downward API, `$(VAR)`), and then only addresses
//! (cluster DNS names to the loopback endpoints a test runs) and paths
//! (mount points to the directories written here) rewritten.

#![allow(unreachable_pub)]

use super::manifests::{Rendered, pod_spec};
use anyhow::{Context as _, bail};
use serde_json::Value;
use shop_testkit::secrets::Secrets;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `from` → `to` string rewrites, longest `from` first.
#[derive(Debug, Clone, Default)]
pub struct Rewrites(Vec<(String, String)>);

impl Rewrites {
    pub fn add(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.0.push((from.into(), to.into()));
        self.0
            .sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    }

    pub fn apply(&self, text: &str) -> String {
        // One pass, so that a rewritten part is not rewritten again.
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        'scan: while !rest.is_empty() {
            for (from, to) in &self.0 {
                if let Some(tail) = rest.strip_prefix(from.as_str()) {
                    out.push_str(to);
                    rest = tail;
                    continue 'scan;
                }
            }
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    }
}

/// What the kubelet would run, here.
#[derive(Debug)]
pub struct Pod {
    /// The container's `command` (empty: the image's entry point).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Pod `pod_name` of `workload` (its first container), its files under
/// `root`; `addresses` rewrites cluster addresses, `secrets` holds what the
/// cluster's Secrets would.
pub fn materialize(
    r: &Rendered,
    workload: &Value,
    pod_name: &str,
    root: &Path,
    secrets: &Secrets,
    addresses: &Rewrites,
) -> anyhow::Result<Pod> {
    let spec = pod_spec(workload);
    let container = &spec["containers"][0];
    let volumes: BTreeMap<&str, &Value> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().unwrap_or("?"), v))
        .collect();

    // Mount points first: a ConfigMap's text may name another mount.
    let mut rewrites = addresses.clone();
    let mounts: Vec<&Value> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for m in &mounts {
        let at = m["mountPath"]
            .as_str()
            .context("a mount without mountPath")?;
        rewrites.add(at, local(root, at).display().to_string());
    }
    for m in &mounts {
        let at = m["mountPath"].as_str().unwrap_or_default();
        let to = local(root, at);
        let vname = m["name"].as_str().unwrap_or_default();
        let files = match volumes.get(vname) {
            Some(v) => volume_files(r, v, secrets)?,
            // A volumeClaimTemplate or an emptyDir: an empty directory.
            None => Vec::new(),
        };
        match m["subPath"].as_str() {
            Some(sub) => {
                let (_, text) = files
                    .into_iter()
                    .find(|(path, _)| path == sub)
                    .with_context(|| format!("mount {at}: no {sub} in volume {vname}"))?;
                write(&to, &text.apply(&rewrites))?;
            }
            None => {
                std::fs::create_dir_all(&to)?;
                for (path, text) in files {
                    write(&to.join(path), &text.apply(&rewrites))?;
                }
            }
        }
    }

    let mut env: Vec<(String, String)> = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let key = e["name"]
            .as_str()
            .context("env without a name")?
            .to_string();
        let from = &e["valueFrom"];
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &env)
        } else if let Some(s) = from["secretKeyRef"].as_object() {
            secrets.get(str_of(s, "name"), str_of(s, "key"))?
        } else if let Some(c) = from["configMapKeyRef"].as_object() {
            r.config_map(str_of(c, "name"))?
                .remove(str_of(c, "key"))
                .context("a missing ConfigMap key")?
        } else if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
            match path {
                "metadata.name" => pod_name.to_string(),
                "metadata.namespace" => "shop".to_string(),
                "status.podIP" | "status.hostIP" => "127.0.0.1".to_string(),
                other => bail!("env {key}: fieldRef {other} is not known here"),
            }
        } else if let Some(resource) = from["resourceFieldRef"]["resource"].as_str() {
            resource_field(container, resource)?
        } else {
            bail!("env {key}: a source not known here: {e}");
        };
        env.push((key, rewrites.apply(&value)));
    }
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|a| rewrites.apply(&expand(a, &env)))
            .collect()
    };
    Ok(Pod {
        command: list(&container["command"]),
        args: list(&container["args"]),
        env,
    })
}

/// A file of a volume, as written.
enum Text {
    /// A ConfigMap's text: addresses and paths rewritten.
    Config(String),
    /// A Secret's bytes: written as they are.
    Secret(Vec<u8>),
}

impl Text {
    fn apply(&self, rewrites: &Rewrites) -> Vec<u8> {
        match self {
            Text::Config(text) => rewrites.apply(text).into_bytes(),
            Text::Secret(bytes) => bytes.clone(),
        }
    }
}

fn volume_files(r: &Rendered, v: &Value, secrets: &Secrets) -> anyhow::Result<Vec<(String, Text)>> {
    let mut out = Vec::new();
    let mut sources: Vec<(&str, &Value)> = Vec::new();
    if v["configMap"].is_object() {
        sources.push(("configMap", &v["configMap"]));
    }
    if v["secret"].is_object() {
        sources.push(("secret", &v["secret"]));
    }
    for s in v["projected"]["sources"].as_array().into_iter().flatten() {
        for kind in ["configMap", "secret"] {
            if s[kind].is_object() {
                sources.push((kind, &s[kind]));
            }
        }
    }
    for (kind, source) in sources {
        let all: Vec<(String, Text)> = if kind == "configMap" {
            let name = source["name"].as_str().unwrap_or_default();
            r.config_map(name)?
                .into_iter()
                .map(|(k, text)| (k, Text::Config(text)))
                .collect()
        } else {
            let name = source["secretName"]
                .as_str()
                .or(source["name"].as_str())
                .unwrap_or_default();
            let dir = secrets.dir(name);
            let mut files = Vec::new();
            for entry in std::fs::read_dir(&dir)
                .with_context(|| format!("Secret {name} is not minted ({})", dir.display()))?
            {
                let entry = entry?;
                files.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    Text::Secret(std::fs::read(entry.path())?),
                ));
            }
            files
        };
        match source["items"].as_array() {
            Some(items) => {
                let mut all: BTreeMap<String, Text> = all.into_iter().collect();
                for item in items {
                    let key = item["key"].as_str().unwrap_or_default();
                    let path = item["path"].as_str().unwrap_or(key);
                    let text = all
                        .remove(key)
                        .with_context(|| format!("no key {key} for {path}"))?;
                    out.push((path.to_string(), text));
                }
            }
            None => out.extend(all),
        }
    }
    Ok(out)
}

/// `resourceFieldRef` of `limits.memory` (bytes) or `limits.cpu` (whole
/// cores, rounded up), with the default divisor.
fn resource_field(container: &Value, resource: &str) -> anyhow::Result<String> {
    let (section, name) = resource
        .split_once('.')
        .with_context(|| format!("resourceFieldRef {resource}"))?;
    let quantity = container["resources"][section][name]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            container["resources"][section][name]
                .as_u64()
                .map(|n| n.to_string())
        })
        .with_context(|| format!("resourceFieldRef {resource}: the container sets none"))?;
    let value = if name == "cpu" {
        match quantity.strip_suffix('m') {
            Some(milli) => milli.parse::<u64>()?.div_ceil(1000),
            None => quantity.parse::<f64>()?.ceil() as u64,
        }
    } else {
        let units = [
            ("Ki", 1u64 << 10),
            ("Mi", 1 << 20),
            ("Gi", 1 << 30),
            ("k", 1000),
            ("M", 1_000_000),
            ("G", 1_000_000_000),
        ];
        let (digits, unit) = units
            .iter()
            .find_map(|(suffix, unit)| quantity.strip_suffix(suffix).map(|d| (d, *unit)))
            .unwrap_or((quantity.as_str(), 1));
        digits.parse::<u64>()? * unit
    };
    Ok(value.to_string())
}

fn str_of<'a>(m: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `$(VAR)` of the variables defined so far, as the kubelet expands them.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = value.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// Where mount point `at` of the pod is here.
fn local(root: &Path, at: &str) -> PathBuf {
    root.join(at.trim_start_matches('/'))
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}
