//! The kind overlay as a cluster would receive it: rendered offline by
//! `kubectl kustomize`, read as JSON, and checked for what its pods need
//! beyond the schemas (which `kubernetes-validate` checks).

#![allow(unreachable_pub)]

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;
use shop_testkit::tools;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// The overlay the tests check.
pub const KIND_OVERLAY: &str = "k8s/overlays/kind";
/// Secrets the manifests reference that something else creates
/// (cert-manager, `just kind-up`), one name per line.
pub const PROVIDED_SECRETS: &str = "k8s/secrets.provided.txt";

/// Rendered manifests.
pub struct Rendered {
    pub docs: Vec<Value>,
    pub yaml: String,
}

impl Rendered {
    /// `kubectl kustomize <overlay>`, with `k8s/` at `root`.
    pub fn of(root: &Path, overlay: &str) -> anyhow::Result<Self> {
        let out = Command::new("kubectl")
            .arg("kustomize")
            .arg(root.join(overlay))
            .output()
            .context("running kubectl kustomize (kubectl 1.32 is on the image)")?;
        ensure!(
            out.status.success(),
            "kubectl kustomize {overlay}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml = String::from_utf8(out.stdout)?;
        let out = pipe(
            Command::new(tools::find("shop-python")?).args([
                "-c",
                "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
            ]),
            &yaml,
        )?;
        if !out.status.success() {
            bail!(
                "reading the rendered YAML: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let json = String::from_utf8(out.stdout)?;
        Ok(Self {
            docs: serde_json::from_str(&json)?,
            yaml,
        })
    }

    /// `kubernetes-validate --strict` against Kubernetes 1.32: its
    /// complaints, if any.
    pub fn validate(&self) -> anyhow::Result<Result<(), String>> {
        let out = pipe(
            Command::new(tools::find("kubernetes-validate")?)
                .args(["--strict", "-k", "1.32", "--quiet", "-"]),
            &self.yaml,
        )?;
        Ok(if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        })
    }

    /// Every object of `kind`.
    pub fn all<'a>(&'a self, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
        let kind = kind.to_string();
        self.docs.iter().filter(move |d| d["kind"] == kind.as_str())
    }

    /// Object `kind`/`name`.
    pub fn get(&self, kind: &str, name: &str) -> anyhow::Result<&Value> {
        self.all(kind)
            .find(|d| d["metadata"]["name"] == name)
            .with_context(|| format!("the overlay renders no {kind} {name}"))
    }

    /// The workload (Deployment or StatefulSet) named `name`.
    pub fn workload(&self, name: &str) -> anyhow::Result<&Value> {
        self.get("Deployment", name)
            .or_else(|_| self.get("StatefulSet", name))
    }

    /// The data of ConfigMap `name`.
    pub fn config_map(&self, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let cm = self.get("ConfigMap", name)?;
        Ok(cm["data"]
            .as_object()
            .map(|d| {
                d.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The names of the Secrets the overlay itself creates.
    pub fn secrets(&self) -> BTreeSet<String> {
        self.all("Secret")
            .filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    }
}

/// Runs `command` with `input` on its standard input.
fn pipe(command: &mut Command, input: &str) -> anyhow::Result<std::process::Output> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    Ok(child.wait_with_output()?)
}

/// The pod template of a workload.
pub fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("?")
}

fn str_list(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// What is wrong with the rendered manifests, one line per problem, given
/// the Secrets documented as provided from outside.
pub fn problems(r: &Rendered, provided: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let created = r.secrets();
    let config_maps: BTreeMap<&str, &Value> = r.all("ConfigMap").map(|c| (name(c), c)).collect();
    let workloads: Vec<&Value> = r.all("Deployment").chain(r.all("StatefulSet")).collect();
    for w in &workloads {
        let wname = format!("{} {}", w["kind"].as_str().unwrap_or("?"), name(w));
        let spec = pod_spec(w);
        let pod_sc = &spec["securityContext"];
        let volumes: BTreeMap<&str, &Value> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (v["name"].as_str().unwrap_or("?"), v))
            .collect();
        let claims: BTreeSet<&str> = w["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .map(name)
            .collect();
        for c in spec["containers"].as_array().into_iter().flatten() {
            let cname = format!("{wname} container {}", c["name"].as_str().unwrap_or("?"));
            container_problems(&cname, c, pod_sc, &mut out);
            // Every mount is a volume of the pod (or a claim template).
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let v = m["name"].as_str().unwrap_or("?");
                if !volumes.contains_key(v) && !claims.contains(v) {
                    out.push(format!(
                        "{cname}: mounts {v}, which is no volume of the pod"
                    ));
                }
            }
            // Keys read from the environment.
            for e in c["env"].as_array().into_iter().flatten() {
                let from = &e["valueFrom"];
                if let Some(cm) = from["configMapKeyRef"].as_object() {
                    key_exists(&cname, &config_maps, cm, &mut out);
                }
                if let Some(s) = from["secretKeyRef"]["name"].as_str() {
                    secret_known(&cname, s, &created, provided, &mut out);
                }
            }
            for e in c["envFrom"].as_array().into_iter().flatten() {
                if let Some(s) = e["secretRef"]["name"].as_str() {
                    secret_known(&cname, s, &created, provided, &mut out);
                }
                if let Some(cm) = e["configMapRef"]["name"].as_str()
                    && !config_maps.contains_key(cm)
                {
                    out.push(format!(
                        "{cname}: reads ConfigMap {cm}, which is not rendered"
                    ));
                }
            }
            // A `--config <path>` names a key of a mounted ConfigMap.
            let args = str_list(&c["args"]);
            if let Some(i) = args.iter().position(|a| *a == "--config") {
                match args.get(i + 1) {
                    Some(path) => {
                        config_file_problems(&cname, c, path, &volumes, &config_maps, &mut out)
                    }
                    None => out.push(format!("{cname}: --config without a path")),
                }
            }
        }
        for (vname, v) in &volumes {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                match config_maps.get(cm) {
                    None => out.push(format!(
                        "{wname}: volume {vname} is ConfigMap {cm}, which is not rendered"
                    )),
                    Some(map) => {
                        for item in v["configMap"]["items"].as_array().into_iter().flatten() {
                            let key = item["key"].as_str().unwrap_or("?");
                            if map["data"].get(key).is_none() {
                                out.push(format!("{wname}: volume {vname} reads key {key} of ConfigMap {cm}, which has none"));
                            }
                        }
                    }
                }
            }
            if let Some(s) = v["secret"]["secretName"].as_str() {
                secret_known(&wname, s, &created, provided, &mut out);
            }
            for source in v["projected"]["sources"].as_array().into_iter().flatten() {
                if let Some(s) = source["secret"]["name"].as_str() {
                    secret_known(&wname, s, &created, provided, &mut out);
                }
                if let Some(cm) = source["configMap"]["name"].as_str()
                    && !config_maps.contains_key(cm)
                {
                    out.push(format!(
                        "{wname}: projects ConfigMap {cm}, which is not rendered"
                    ));
                }
            }
        }
    }
    // A Service a mesh client resolves by DNS is headless (one address
    // per pod: the mesh balances requests, kube-proxy only connections),
    // and serves the port the client dials.
    for (cm_name, cm) in &config_maps {
        for (key, text) in cm["data"].as_object().into_iter().flatten() {
            let Some(text) = text.as_str() else { continue };
            if !key.ends_with(".toml") {
                continue;
            }
            let Ok(doc) = text.parse::<toml::Table>() else {
                out.push(format!("ConfigMap {cm_name}: {key} is not valid TOML"));
                continue;
            };
            let Some(upstreams) = doc.get("upstreams").and_then(|u| u.as_table()) else {
                continue;
            };
            for (upstream, policy) in upstreams {
                let Some(dns) = policy.get("dns").and_then(|d| d.as_str()) else {
                    continue;
                };
                let (host, port) = dns.rsplit_once(':').unwrap_or((dns, ""));
                let service = host.split('.').next().unwrap_or(host);
                match r.get("Service", service) {
                    Err(_) => out.push(format!("ConfigMap {cm_name}: upstream {upstream} resolves {dns}, and no Service {service} is rendered")),
                    Ok(s) => {
                        if s["spec"]["clusterIP"] != "None" {
                            out.push(format!("Service {service}: resolved by the mesh of {cm_name} ({upstream}), so it must be headless (clusterIP: None)"));
                        }
                        let serves = s["spec"]["ports"].as_array().into_iter().flatten().any(|p| p["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(port));
                        if !serves {
                            out.push(format!("Service {service}: has no port {port}, which {cm_name} ({upstream}) dials"));
                        }
                    }
                }
            }
        }
    }
    out
}

fn container_problems(cname: &str, c: &Value, pod_sc: &Value, out: &mut Vec<String>) {
    let ports: Vec<&Value> = c["ports"].as_array().into_iter().flatten().collect();
    let declared = |port: &Value| {
        ports.iter().any(|p| {
            (port.is_u64() && p["containerPort"] == *port)
                || (port.is_string() && p["name"] == *port)
        })
    };
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let p = &c[probe];
        if p.is_null() {
            if probe != "startupProbe" {
                out.push(format!("{cname}: no {probe}"));
            }
            continue;
        }
        let port = [
            &p["grpc"]["port"],
            &p["httpGet"]["port"],
            &p["tcpSocket"]["port"],
        ]
        .into_iter()
        .find(|v| !v.is_null());
        match port {
            Some(port) if !declared(port) => out.push(format!(
                "{cname}: {probe} on port {port}, which the container does not declare"
            )),
            None if p["exec"].is_null() => out.push(format!("{cname}: {probe} checks nothing")),
            _ => {}
        }
    }
    let sc = &c["securityContext"];
    let non_root = sc["runAsNonRoot"]
        .as_bool()
        .or(pod_sc["runAsNonRoot"].as_bool());
    if non_root != Some(true) {
        out.push(format!("{cname}: not runAsNonRoot"));
    }
    if sc["readOnlyRootFilesystem"] != true {
        out.push(format!("{cname}: the root filesystem is writable"));
    }
    if sc["allowPrivilegeEscalation"] != false {
        out.push(format!("{cname}: allowPrivilegeEscalation is not false"));
    }
    for limit in ["cpu", "memory"] {
        if c["resources"]["limits"][limit].is_null() {
            out.push(format!("{cname}: no {limit} limit"));
        }
        if c["resources"]["requests"][limit].is_null() {
            out.push(format!("{cname}: no {limit} request"));
        }
    }
}

fn key_exists(
    cname: &str,
    config_maps: &BTreeMap<&str, &Value>,
    r: &serde_json::Map<String, Value>,
    out: &mut Vec<String>,
) {
    let cm = r.get("name").and_then(Value::as_str).unwrap_or("?");
    let key = r.get("key").and_then(Value::as_str).unwrap_or("?");
    match config_maps.get(cm) {
        None => out.push(format!(
            "{cname}: reads ConfigMap {cm}, which is not rendered"
        )),
        Some(map) if map["data"].get(key).is_none() => out.push(format!(
            "{cname}: reads key {key} of ConfigMap {cm}, which has none"
        )),
        Some(_) => {}
    }
}

fn secret_known(
    who: &str,
    secret: &str,
    created: &BTreeSet<String>,
    provided: &BTreeSet<String>,
    out: &mut Vec<String>,
) {
    if !created.contains(secret) && !provided.contains(secret) {
        out.push(format!(
            "{who}: reads Secret {secret}, which the overlay does not create and {PROVIDED_SECRETS} does not list"
        ));
    }
}

fn config_file_problems(
    cname: &str,
    c: &Value,
    path: &str,
    volumes: &BTreeMap<&str, &Value>,
    config_maps: &BTreeMap<&str, &Value>,
    out: &mut Vec<String>,
) {
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap_or("");
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().unwrap_or("").len());
    let Some(mount) = mount else {
        out.push(format!("{cname}: --config {path} is on no mounted volume"));
        return;
    };
    let at = mount["mountPath"].as_str().unwrap_or("");
    let key = match mount["subPath"].as_str() {
        Some(sub) => sub.to_string(),
        None => path[at.len()..].trim_start_matches('/').to_string(),
    };
    let volume = mount["name"].as_str().and_then(|v| volumes.get(v));
    let Some(cm) = volume.and_then(|v| v["configMap"]["name"].as_str()) else {
        out.push(format!(
            "{cname}: --config {path} is not on a ConfigMap volume"
        ));
        return;
    };
    // Through `items`, the file name may differ from the key.
    let key = volume
        .and_then(|v| v["configMap"]["items"].as_array())
        .and_then(|items| items.iter().find(|i| i["path"] == key.as_str()))
        .and_then(|i| i["key"].as_str())
        .map_or(key.clone(), str::to_string);
    if config_maps
        .get(cm)
        .is_none_or(|m| m["data"].get(&key).is_none())
    {
        out.push(format!(
            "{cname}: --config {path} is key {key} of ConfigMap {cm}, which has none"
        ));
    }
}

/// The Secret names listed in [`PROVIDED_SECRETS`] under `root`.
pub fn provided_secrets(root: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(root.join(PROVIDED_SECRETS))
        .with_context(|| format!("reading {PROVIDED_SECRETS}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}
