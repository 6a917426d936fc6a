//! `aigc-operator rbac` prints the rules the library derives, and writes the chart's files.

use std::process::Command;

use aigc_operator::rbac;

fn aigc_operator(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_aigc-operator"))
        .args(args)
        .output()
        .expect("the binary runs");
    assert!(
        output.status.success(),
        "aigc-operator {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn prints_cluster_and_leader_election_rules() {
    assert_eq!(
        aigc_operator(&["rbac"]),
        rbac::rules_yaml(&rbac::cluster_rules()).unwrap()
    );
    assert_eq!(
        aigc_operator(&["rbac", "--leader-election"]),
        rbac::rules_yaml(&rbac::leader_election_rules()).unwrap()
    );
}

#[test]
fn writes_every_rule_file_of_the_chart() {
    let dir = std::env::temp_dir().join(format!("aigc-rbac-{}", std::process::id()));
    aigc_operator(&["rbac", "--write-dir", dir.to_str().unwrap()]);
    let files = rbac::chart_rule_files();
    assert_eq!(files.len(), 4);
    for (name, rules) in files {
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).unwrap(),
            rbac::rules_yaml(&rules).unwrap(),
            "{name}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
