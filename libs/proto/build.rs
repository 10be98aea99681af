//! Compiles every contract under `proto/` with protox (no system protoc),
//! generates tonic/prost code for each package, writes the encoded
//! descriptor set for reflection, and writes `packages.rs`, the module tree
//! that `lib.rs` includes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let root = root.canonicalize()?;
    println!("cargo:rerun-if-changed={}", root.display());

    let mut files = Vec::new();
    collect_protos(&root, &root, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(&files)?;
    let fds = compiler.file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("shop_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let packages: Vec<String> = fds
        .file
        .iter()
        .filter_map(|f| f.package.clone())
        .filter(|p| p.starts_with("shop."))
        .collect();

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    fs::write(out_dir.join("packages.rs"), module_tree(&packages))?;
    Ok(())
}

fn collect_protos(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    Ok(())
}

/// A nested `pub mod` tree, one leaf per protobuf package, each including
/// the file prost generated for it (`shop.users.v1` -> `shop::users::v1`).
fn module_tree(packages: &[String]) -> String {
    #[derive(Default)]
    struct Node(BTreeMap<String, Node>, Option<String>);
    let mut tree = Node::default();
    for pkg in packages {
        let mut node = &mut tree;
        for part in pkg.split('.') {
            node = node.0.entry(part.to_string()).or_default();
        }
        node.1 = Some(pkg.clone());
    }
    fn render(node: &Node, out: &mut String) {
        if let Some(pkg) = &node.1 {
            let _ = writeln!(out, "include!(concat!(env!(\"OUT_DIR\"), \"/{pkg}.rs\"));");
        }
        for (name, child) in &node.0 {
            let _ = writeln!(out, "pub mod {name} {{");
            render(child, out);
            out.push_str("}\n");
        }
    }
    let mut out = String::new();
    render(&tree, &mut out);
    out
}
