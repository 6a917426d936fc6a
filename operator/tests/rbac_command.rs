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
fn writes_both_rule_files() {
    let dir = std::env::temp_dir().join(format!("aigc-rbac-{}", std::process::id()));
    aigc_operator(&["rbac", "--write-dir", dir.to_str().unwrap()]);
    let read = |name| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(
        read(rbac::CLUSTER_RULES_FILE),
        rbac::rules_yaml(&rbac::cluster_rules()).unwrap()
    );
    assert_eq!(
        read(rbac::LEADER_ELECTION_RULES_FILE),
        rbac::rules_yaml(&rbac::leader_election_rules()).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
