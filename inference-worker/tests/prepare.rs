//! `aigc-worker prepare`: validation, cleaning, statistics and all-or-nothing publishing.

mod training_support;

use std::process::Command;

use aigc_crds::dataset::DataSchema;
use aigc_worker::prepare::{InputFormat, PrepareOptions, RejectReason, Report, prepare};
use training_support::TempDir;

fn schema(yaml: &str) -> DataSchema {
    serde_yaml::from_str(yaml).unwrap()
}

const PEOPLE: &str = "columns:
  - {name: name, type: string, required: true}
  - {name: age, type: integer, required: true, minimum: 0, maximum: 130}
  - {name: score, type: number}
  - {name: member, type: boolean}
";

fn options(
    source: &std::path::Path,
    format: InputFormat,
    schema: Option<DataSchema>,
    out: &std::path::Path,
) -> PrepareOptions {
    PrepareOptions {
        source: source.display().to_string(),
        format,
        schema,
        out: format!("file://{}", out.display()),
        drop_invalid_rows: true,
        dedupe: true,
        max_row_bytes: Some(64),
        shard_bytes: 64 << 20,
    }
}

fn count(report: &Report, reason: RejectReason) -> u64 {
    report.rejected.get(&reason).copied().unwrap_or(0)
}

#[test]
fn csv_rows_are_validated_cleaned_and_counted() {
    let tmp = TempDir::new("prep-csv");
    let src = tmp.join("people.csv");
    std::fs::write(
        &src,
        "name,age,score,member,extra\n\
         ada,36,1.5,true,x\n\
         bob,abc,2.0,false,x\n\
         cy,200,3.0,true,x\n\
         ,40,1.0,true,x\n\
         dee,41,NaN,false,x\n\
         ada,36,1.5,true,y\n\
         eve,29,,FALSE,x\n\
         fay,30,1.0\n\
         gus,50,9.25,true,xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
    )
    .unwrap();
    let out = tmp.join("out");
    let report = prepare(&options(&src, InputFormat::Csv, Some(schema(PEOPLE)), &out));
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.rows_in, 9);
    assert_eq!(report.rows_out, 2, "{report:#?}");
    assert_eq!(count(&report, RejectReason::WrongType), 1);
    assert_eq!(count(&report, RejectReason::OutOfRange), 1);
    assert_eq!(count(&report, RejectReason::MissingRequired), 1);
    assert_eq!(count(&report, RejectReason::NotFinite), 1);
    assert_eq!(
        count(&report, RejectReason::Duplicate),
        1,
        "same values, differing only in an ignored column"
    );
    assert_eq!(count(&report, RejectReason::ParseError), 1);
    assert_eq!(count(&report, RejectReason::TooLong), 1);
    assert_eq!(report.ignored_columns, vec!["extra".to_string()]);
    let bob = report.reject_samples.iter().find(|s| s.row == 2).unwrap();
    assert_eq!(bob.message, "column \"age\": \"abc\" is not an integer");

    let age = &report.columns[1];
    assert_eq!(
        (age.min, age.max, age.null_count),
        (Some(29.0), Some(36.0), 0)
    );
    let score = &report.columns[2];
    assert_eq!(
        (score.min, score.max, score.null_count),
        (Some(1.5), Some(1.5), 1)
    );

    let shard = std::fs::read_to_string(out.join("data/part-00000.csv")).unwrap();
    assert_eq!(
        shard,
        "name,age,score,member\nada,36,1.5,true\neve,29,,false\n"
    );
    let manifest =
        aigc_storage::Manifest::from_json(&std::fs::read(out.join("manifest.json")).unwrap())
            .unwrap();
    let keys: Vec<&str> = manifest.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, ["data/part-00000.csv", "dataset.json", "stats.json"]);
    assert_eq!(
        report.manifest_digest.as_deref(),
        Some(manifest.digest().as_str())
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["rowsOut"], 2);
    assert_eq!(stats["rejected"]["notFinite"], 1);
}

#[test]
fn truncated_and_malformed_jsonl_lines_are_reported_not_fatal() {
    let tmp = TempDir::new("prep-jsonl");
    let src = tmp.join("people.jsonl");
    std::fs::write(
        &src,
        "{\"name\":\"ada\",\"age\":36,\"score\":1.5,\"member\":true}\n\
         \n\
         [1,2]\n\
         {\"name\":\"bob\",\"age\":\"36\"}\n\
         {\"name\":\"cy\",\"age\":7.5}\n\
         {\"name\":\"dee\",\"age\":1,\"score\":null,\"note\":\"hi\"}\n\
         {\"name\":\"eve\",\"age\":2,\"sc",
    )
    .unwrap();
    let out = tmp.join("out");
    let report = prepare(&options(
        &src,
        InputFormat::Jsonl,
        Some(schema(PEOPLE)),
        &out,
    ));
    assert!(report.succeeded(), "{report:?}");
    assert_eq!(report.rows_in, 6, "the blank line is not a row");
    assert_eq!(report.rows_out, 2);
    assert_eq!(count(&report, RejectReason::ParseError), 2);
    assert_eq!(count(&report, RejectReason::WrongType), 2);
    let truncated = report.reject_samples.iter().find(|s| s.row == 7).unwrap();
    assert!(
        truncated.message.contains("not valid JSON"),
        "{}",
        truncated.message
    );
    assert_eq!(report.ignored_columns, vec!["note".to_string()]);
    let shard = std::fs::read_to_string(out.join("data/part-00000.csv")).unwrap();
    assert_eq!(shard, "name,age,score,member\nada,36,1.5,true\ndee,1,,\n");
}

#[test]
fn an_empty_or_fully_rejected_dataset_publishes_nothing() {
    let tmp = TempDir::new("prep-empty");
    let empty = tmp.join("empty.csv");
    std::fs::write(&empty, "name,age,score,member\n").unwrap();
    let out = tmp.join("out");
    let report = prepare(&options(
        &empty,
        InputFormat::Csv,
        Some(schema(PEOPLE)),
        &out,
    ));
    assert_eq!(
        report.error.as_deref(),
        Some("the source has no rows; an empty dataset is not published")
    );
    assert!(!out.exists());

    let bad = tmp.join("bad.csv");
    std::fs::write(&bad, "name,age\nx,NaN\ny,old\n").unwrap();
    let report = prepare(&options(&bad, InputFormat::Csv, Some(schema(PEOPLE)), &out));
    let error = report.error.unwrap();
    assert!(
        error.contains("all 2 rows were rejected") && error.contains("wrongType: 2"),
        "{error}"
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "no staging directory left behind: {leftovers:?}"
    );

    let missing = tmp.join("missing.csv");
    std::fs::write(&missing, "name,score\nx,1\n").unwrap();
    let report = prepare(&options(
        &missing,
        InputFormat::Csv,
        Some(schema(PEOPLE)),
        &out,
    ));
    assert!(
        report
            .error
            .unwrap()
            .contains("required column \"age\" is not in the CSV header")
    );
}

#[test]
fn strict_mode_fails_at_the_first_invalid_row() {
    let tmp = TempDir::new("prep-strict");
    let src = tmp.join("p.csv");
    std::fs::write(&src, "name,age\nok,1\nbad,-1\n").unwrap();
    let out = tmp.join("out");
    let mut o = options(&src, InputFormat::Csv, Some(schema(PEOPLE)), &out);
    o.drop_invalid_rows = false;
    let error = prepare(&o).error.unwrap();
    assert!(
        error.contains("row 2") && error.contains("-1 is outside [0, 130]"),
        "{error}"
    );
    assert!(!out.exists());
}

#[test]
fn text_shards_roll_over_and_keep_every_line() {
    let tmp = TempDir::new("prep-text");
    let out = tmp.join("out");
    let mut o = options(&training_support::corpus(), InputFormat::Text, None, &out);
    o.dedupe = false;
    o.max_row_bytes = None;
    o.shard_bytes = 2048;
    let report = prepare(&o);
    assert!(report.succeeded(), "{report:?}");
    let corpus = std::fs::read_to_string(training_support::corpus()).unwrap();
    assert_eq!(report.rows_out as usize, corpus.lines().count());
    assert!(report.shards >= 2);
    let mut joined = String::new();
    for i in 0..report.shards {
        joined
            .push_str(&std::fs::read_to_string(out.join(format!("data/part-{i:05}.txt"))).unwrap());
    }
    assert_eq!(joined, corpus);
}

#[test]
fn cli_reports_breast_cancer_statistics_and_refuses_to_overwrite() {
    let tmp = TempDir::new("prep-cli");
    let csv = training_support::shared_dataset("breast_cancer.csv");
    let schema = training_support::breast_cancer_schema(tmp.path(), &csv);
    let out = tmp.join("bc");
    let report_path = tmp.join("report.json");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_aigc-worker"))
            .args(["prepare", "--format", "csv", "--dedupe", "--source"])
            .arg(&csv)
            .arg("--schema")
            .arg(&schema)
            .arg("--out")
            .arg(&out)
            .arg("--report")
            .arg(&report_path)
            .arg("--termination-message-path")
            .arg(tmp.join("termination-log"))
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(report["rowsIn"], 569);
    assert_eq!(report["rowsOut"], 569);
    let radius = &report["columns"][0];
    assert_eq!(radius["name"], "mean_radius");
    assert_eq!(
        (radius["min"].as_f64(), radius["max"].as_f64()),
        (Some(6.981), Some(28.11))
    );
    assert_eq!(report["columns"][30]["nullCount"], 0);
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(on_disk, report);
    let message = std::fs::read(tmp.join("termination-log")).unwrap();
    assert!(message.len() <= 4096, "{} bytes", message.len());
    assert_eq!(
        message,
        first.stdout.trim_ascii_end(),
        "stdout's last line is the termination message"
    );

    let second = run();
    assert_eq!(second.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("already holds a published version")
    );
}
