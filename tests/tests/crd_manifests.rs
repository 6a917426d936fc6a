//! The CRD manifests shipped in the Helm chart are exactly what the Rust types generate, and
//! every CEL rule in them compiles.

use aigc_crds::{all_crds, crd_file_name, crd_yaml};
use aigc_e2e::{crd_schema, repo_root};

#[test]
fn chart_crds_match_the_generated_ones() {
    let dir = repo_root().join("charts/aigc-operator/crds");
    let mut expected_files = Vec::new();
    for crd in all_crds() {
        let name = crd_file_name(&crd);
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
            panic!("{name} missing from charts/aigc-operator/crds ({e}); run `aigc-operator crds --write-dir charts/aigc-operator/crds`")
        });
        assert!(
            committed == crd_yaml(&crd).unwrap(),
            "charts/aigc-operator/crds/{name} differs from the generated CRD; run `aigc-operator crds --write-dir charts/aigc-operator/crds`"
        );
        expected_files.push(name);
    }
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    expected_files.sort();
    assert_eq!(
        present, expected_files,
        "charts/aigc-operator/crds holds files no type generates"
    );
}

#[test]
fn every_kind_is_in_the_aigc_category_with_a_short_name_and_status() {
    // Short names of built-in kinds and of KServe's, which users often run alongside.
    let taken = [
        "cm", "crd", "cs", "csr", "ds", "deploy", "ep", "ev", "hpa", "ing", "limits", "netpol",
        "no", "ns", "pdb", "po", "pv", "pvc", "quota", "rc", "rs", "sa", "sc", "sts", "svc",
        "isvc", "ig", "tm", "sr",
    ];
    let mut seen = Vec::new();
    for crd in all_crds() {
        let names = &crd.spec.names;
        assert_eq!(crd.spec.group, "aigc.dev");
        assert_eq!(
            names.categories.as_deref(),
            Some(&["aigc".to_owned()][..]),
            "{}",
            names.kind
        );
        let short = names.short_names.clone().unwrap_or_default();
        assert_eq!(short.len(), 1, "{} has one short name", names.kind);
        assert!(
            !taken.contains(&short[0].as_str()),
            "{} collides with another kind's short name",
            short[0]
        );
        seen.push(short[0].clone());
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        let subresources = version.subresources.as_ref().expect("subresources");
        assert!(
            subresources.status.is_some(),
            "{} has a status subresource",
            names.kind
        );
        assert_eq!(
            subresources.scale.is_some(),
            names.kind == "InferenceService"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 4)
        );
    }
    seen.sort();
    assert_eq!(seen, ["aisvc", "dset", "mdl", "tier", "tj"]);
    let cluster_scoped: Vec<_> = all_crds()
        .into_iter()
        .filter(|c| c.spec.scope == "Cluster")
        .map(|c| c.spec.names.kind)
        .collect();
    assert_eq!(cluster_scoped, ["StorageTier"]);
}

#[test]
fn every_cel_rule_compiles() {
    for crd in all_crds() {
        let compiled = kube_cel::compile_schema(&crd_schema(&crd));
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", crd.spec.names.kind);
    }
}
