//! Deliberately broken manifests in `tests/fixtures/invalid/` are rejected at admission with a
//! message that names the field. Each file states what it expects on `# expect:` lines.

use aigc_e2e::{admit, repo_root, yaml_documents, yaml_files};

#[test]
fn broken_manifests_are_rejected_naming_the_field() {
    let files = yaml_files(&repo_root().join("tests/fixtures/invalid"));
    assert!(
        files.len() >= 20,
        "expected the broken-manifest fixtures, found {}",
        files.len()
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expectations: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expectations.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let docs = yaml_documents(&file);
        assert_eq!(docs.len(), 1, "{} holds one manifest", file.display());
        let errors: Vec<String> = match admit(&docs[0]) {
            Ok(_) => panic!("{} was accepted", file.display()),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        };
        for expected in expectations {
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{}: no error contains {expected:?}; got {errors:#?}",
                file.display()
            );
        }
    }
}
