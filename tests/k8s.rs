//! The Kubernetes files, checked offline: every manifest against the MPIJob CRD schema (unknown
//! fields rejected) and the operator's rules, the serving Deployment's pod template against the
//! PodTemplateSpec schema that CRD embeds, the validator against broken copies, the Dockerfile
//! and manifests against the binary's real path and flags, and the server against the training
//! job's model location and credentials.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "k8s/ should hold mpijob.yaml, verify-mpijob.yaml, serve.yaml and the secret example"
    );
    files
}

#[test]
fn every_manifest_is_valid_against_the_mpijob_crd_and_the_operator_rules() {
    let Some(crd) = shared_data("../k8s/kubeflow.org_mpijobs.crd.yaml") else {
        return;
    };
    let Some(py) = python_with("yaml, jsonschema") else {
        return;
    };
    let out = Command::new(&py)
        .arg(repo("scripts/validate_k8s.py"))
        .arg(&crd)
        .args(manifests())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(": valid").count(), 5, "{text}");
    assert!(
        text.contains("serve.yaml[0] Deployment funksvd-serve: valid"),
        "{text}"
    );
}

#[test]
fn the_validator_rejects_broken_copies_of_the_manifests() {
    let Some(crd) = shared_data("../k8s/kubeflow.org_mpijobs.crd.yaml") else {
        return;
    };
    let Some(py) = python_with("yaml, jsonschema") else {
        return;
    };
    for manifest in [
        "k8s/mpijob.yaml",
        "k8s/verify-mpijob.yaml",
        "k8s/serve.yaml",
    ] {
        let out = Command::new(&py)
            .arg(repo("scripts/validate_k8s.py"))
            .arg("--self-test")
            .arg(&crd)
            .arg(repo(manifest))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{manifest}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // And a broken file on disk fails the plain validation too.
    let dir = temp_dir("k8s-broken");
    let broken = dir.join("broken.yaml");
    let text = std::fs::read_to_string(repo("k8s/mpijob.yaml"))
        .unwrap()
        .replace("slotsPerWorker: 2", "slotsPerWorker: two");
    std::fs::write(&broken, text).unwrap();
    let out = Command::new(&py)
        .arg(repo("scripts/validate_k8s.py"))
        .arg(&crd)
        .arg(&broken)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("slotsPerWorker"));
}

#[test]
fn dockerfile_and_manifests_name_the_real_binary_path_and_flags() {
    let dockerfile = std::fs::read_to_string(repo("k8s/Dockerfile")).unwrap();
    assert!(dockerfile.contains("cargo build --release --locked --bin funksvd"));
    assert!(
        dockerfile.contains("COPY --from=build /src/target/release/funksvd /usr/local/bin/funksvd")
    );
    assert!(repo("Cargo.lock").exists(), "the image builds --locked");
    for manifest in manifests() {
        let text = std::fs::read_to_string(&manifest).unwrap();
        if !text.contains("kind: MPIJob") {
            continue;
        }
        let args = quoted_args(&text);
        let at = args
            .iter()
            .position(|a| a == "/usr/local/bin/funksvd")
            .expect("the launcher runs /usr/local/bin/funksvd");
        let command = &args[at + 1];
        let help = solo(&[command, "--help"]).ok().stdout;
        for flag in args[at + 2..].iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "{}: funksvd {command} has no {flag}",
                manifest.display()
            );
        }
        // Every variable forwarded with -x is one the binary reads.
        let store = std::fs::read_to_string(repo("src/store.rs")).unwrap();
        for w in args[..at].windows(2).filter(|w| w[0] == "-x") {
            assert!(
                store.contains(&format!("\"{}\"", w[1])),
                "{}: funksvd does not read {}",
                manifest.display(),
                w[1]
            );
        }
    }
}

/// The quoted list items (`- "..."`) of a manifest: its command lines.
fn quoted_args(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- \"")
                .and_then(|a| a.strip_suffix('"'))
        })
        .map(String::from)
        .collect()
}

/// The value after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag}"));
    &args[at + 1]
}

#[test]
fn the_server_reads_the_model_training_publishes_with_the_same_credentials() {
    let serve = std::fs::read_to_string(repo("k8s/serve.yaml")).unwrap();
    let train = std::fs::read_to_string(repo("k8s/mpijob.yaml")).unwrap();
    let (serve_args, train_args) = (quoted_args(&serve), quoted_args(&train));
    assert_eq!(serve_args[0], "serve");
    assert!(serve.contains("command: [\"/usr/local/bin/funksvd\"]"));
    for flag in ["--model", "--data"] {
        assert_eq!(
            flag_value(&serve_args, flag),
            flag_value(&train_args, flag),
            "{flag}"
        );
    }
    let secret = |text: &str| {
        let at = text.find("secretRef:").expect("a secretRef");
        text[at..].split_whitespace().nth(2).unwrap().to_string()
    };
    assert_eq!(secret(&serve), secret(&train));
    // Every flag is one `funksvd serve` has.
    let help = solo(&["serve", "--help"]).ok().stdout;
    for flag in serve_args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")),
            "funksvd serve has no {flag}"
        );
    }
}
