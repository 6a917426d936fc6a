//! The Dockerfiles in `images/` build the right binaries and run them as a non-root numeric
//! user from a small runtime stage. Docker cannot run on the build machines, so the files are
//! parsed and checked against the workspace's packages and binaries.

use std::collections::BTreeMap;

use aigc_e2e::repo_root;
use serde_json::Value;

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

#[derive(Debug)]
struct Stage {
    base: String,
    name: String,
    instructions: Vec<Instruction>,
}

fn parse_dockerfile(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    assert!(current.is_empty(), "the file ends inside a continuation");
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        if keyword == "FROM" {
            let words: Vec<&str> = args.split(' ').collect();
            let (base, name) = match words[..] {
                [base, as_, name] if as_.eq_ignore_ascii_case("as") => (base, name),
                _ => panic!("FROM {args}: every stage is named (FROM image AS name)"),
            };
            stages.push(Stage {
                base: base.to_owned(),
                name: name.to_owned(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push(Instruction { keyword, args });
        } else {
            assert_eq!(keyword, "ARG", "only ARG may precede the first FROM");
        }
    }
    stages
}

/// `cargo metadata` of the workspace's own packages.
fn cargo_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Binary targets per package.
fn workspace_binaries() -> BTreeMap<String, Vec<String>> {
    cargo_metadata()["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|package| {
            let bins = package["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect();
            (package["name"].as_str().unwrap().to_owned(), bins)
        })
        .collect()
}

struct Expected {
    file: &'static str,
    package: &'static str,
    features: Option<&'static str>,
    runtime_base: &'static str,
}

fn check_image(expected: &Expected, binaries: &BTreeMap<String, Vec<String>>) {
    let file = expected.file;
    let text = std::fs::read_to_string(repo_root().join("images").join(file))
        .unwrap_or_else(|e| panic!("images/{file}: {e}"));
    let stages = parse_dockerfile(&text);
    assert!(stages.len() >= 2, "{file} is multi-stage");

    let binary = binaries
        .get(expected.package)
        .and_then(|bins| bins.first())
        .unwrap_or_else(|| panic!("{file}: the workspace has no package {}", expected.package));

    // A build stage compiles exactly that package, locked and optimised.
    let build = stages
        .iter()
        .find(|s| {
            s.instructions
                .iter()
                .any(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        })
        .unwrap_or_else(|| panic!("{file}: no stage runs cargo build"));
    let cargo_run = &build
        .instructions
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .unwrap()
        .args;
    for flag in [
        "--release".to_owned(),
        "--locked".to_owned(),
        format!("-p {}", expected.package),
    ] {
        assert!(
            cargo_run.contains(&flag),
            "{file}: cargo build lacks {flag}: {cargo_run}"
        );
    }
    match expected.features {
        Some(features) => assert!(
            cargo_run.contains(&format!("--features {features}")),
            "{file}: cargo build lacks --features {features}"
        ),
        None => assert!(!cargo_run.contains("--features"), "{file}: {cargo_run}"),
    }
    assert!(
        cargo_run.contains(&format!("target/release/{binary} ")),
        "{file}: the build stage does not take target/release/{binary}"
    );

    // The last stage is the small runtime: not a toolchain image.
    let runtime = stages.last().unwrap();
    assert_eq!(runtime.name, "runtime", "{file}");
    assert!(
        runtime.base.starts_with(expected.runtime_base),
        "{file}: runtime base {} is not {}",
        runtime.base,
        expected.runtime_base
    );
    assert!(
        !runtime.base.starts_with("rust:") && !runtime.base.contains("devel"),
        "{file}: the runtime stage must not carry a toolchain ({})",
        runtime.base
    );
    assert!(
        !runtime
            .instructions
            .iter()
            .any(|i| i.args.contains("cargo")),
        "{file}: the runtime stage runs cargo"
    );

    // It copies the binary from an earlier stage and runs it.
    let copy = runtime
        .instructions
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.starts_with("--from="))
        .unwrap_or_else(|| panic!("{file}: the runtime stage copies nothing from a build stage"));
    let words: Vec<&str> = copy.args.split(' ').collect();
    let from = words[0].trim_start_matches("--from=");
    assert!(
        stages[..stages.len() - 1].iter().any(|s| s.name == from),
        "{file}: COPY --from={from} names no earlier stage"
    );
    let (source, destination) = (words[1], words[2]);
    assert!(
        source.ends_with(&format!("/{binary}")),
        "{file}: copies {source}"
    );
    let entrypoint = runtime
        .instructions
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .unwrap_or_else(|| panic!("{file}: no ENTRYPOINT"));
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.args)
        .unwrap_or_else(|e| panic!("{file}: ENTRYPOINT is not exec (JSON) form: {e}"));
    assert_eq!(
        entrypoint,
        [destination],
        "{file}: ENTRYPOINT runs what was copied"
    );

    // The image runs as a numeric non-root user, so the kubelet can enforce runAsNonRoot.
    let user = runtime
        .instructions
        .iter()
        .rposition(|i| i.keyword == "USER")
        .unwrap_or_else(|| panic!("{file}: the runtime stage sets no USER"));
    let (uid, gid) = runtime.instructions[user]
        .args
        .split_once(':')
        .unwrap_or_else(|| panic!("{file}: USER names uid:gid"));
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("{file}: USER uid {uid} is numeric"));
    let gid: u32 = gid
        .parse()
        .unwrap_or_else(|_| panic!("{file}: USER gid {gid} is numeric"));
    assert!(uid != 0 && gid != 0, "{file}: runs as root");
    assert!(
        !runtime.instructions[user..]
            .iter()
            .any(|i| i.keyword == "RUN"),
        "{file}: RUN after USER would need root"
    );
}

#[test]
fn images_build_our_binaries_and_run_them_unprivileged() {
    let binaries = workspace_binaries();
    assert_eq!(binaries["aigc-operator"], ["aigc-operator"]);
    for expected in [
        Expected {
            file: "operator.Dockerfile",
            package: "aigc-operator",
            features: None,
            runtime_base: "debian:bookworm-slim",
        },
        Expected {
            file: "worker.Dockerfile",
            package: "aigc-worker",
            features: None,
            runtime_base: "debian:bookworm-slim",
        },
        Expected {
            file: "worker-gpu.Dockerfile",
            package: "aigc-worker",
            features: Some("cuda"),
            runtime_base: "nvidia/cuda:",
        },
    ] {
        check_image(&expected, &binaries);
    }
}

#[test]
fn images_build_with_the_workspace_rust_version() {
    let metadata = cargo_metadata();
    let rust_version = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "aigc-operator")
        .and_then(|p| p["rust_version"].as_str())
        .expect("the workspace sets rust-version");
    for file in [
        "operator.Dockerfile",
        "worker.Dockerfile",
        "worker-gpu.Dockerfile",
    ] {
        let text = std::fs::read_to_string(repo_root().join("images").join(file)).unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim() == format!("ARG RUST_VERSION={rust_version}")),
            "{file}: ARG RUST_VERSION differs from the workspace rust-version {rust_version}"
        );
    }
}

#[test]
fn gpu_image_builds_on_a_cuda_devel_base_and_runs_on_the_cuda_runtime() {
    let text = std::fs::read_to_string(repo_root().join("images/worker-gpu.Dockerfile")).unwrap();
    let stages = parse_dockerfile(&text);
    let build = stages
        .iter()
        .find(|s| s.name == "build")
        .expect("a build stage");
    assert!(build.base.starts_with("nvidia/cuda:") && build.base.contains("-devel-"));
    assert!(
        build
            .instructions
            .iter()
            .any(|i| i.keyword == "ENV" && i.args.contains("CUDA_COMPUTE_CAP=")),
        "candle's kernels need CUDA_COMPUTE_CAP when no GPU is visible at build time"
    );
    let runtime = stages.last().unwrap();
    assert!(runtime.base.contains("-runtime-"), "{}", runtime.base);
}

#[test]
fn the_parser_rejects_what_the_checks_rely_on() {
    let stages = parse_dockerfile("ARG X=1\nFROM a AS b\nRUN one \\\n  two\n# c\nUSER 1:1\n");
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0].instructions[0].args, "one two");
    let unnamed = std::panic::catch_unwind(|| parse_dockerfile("FROM a\n"));
    assert!(unnamed.is_err());
}
