//! The modern-server variant of the schema and the query, checked on chDB
//! (a modern in-process ClickHouse from PyPI); the legacy variant is exercised
//! against the real 18.16 server by every other end-to-end test.

use std::process::Command;

use tidewatch_tests::*;

#[test]
fn modern_schema_and_queries_run_on_chdb() {
    let dir = tempfile::tempdir().unwrap();
    let schema = run_ok(Command::new(bin("tidewatch-collector")).args([
        "migrate",
        "--print",
        "--server-version",
        "26.9",
    ]));
    assert!(
        schema.contains("LowCardinality(String)") && schema.contains("TTL"),
        "{schema}"
    );
    let legacy = run_ok(Command::new(bin("tidewatch-collector")).args([
        "migrate",
        "--print",
        "--server-version",
        "18.16",
    ]));
    assert!(
        !legacy.contains("LowCardinality") && !legacy.contains("TTL"),
        "{legacy}"
    );
    let query = run_ok(Command::new(bin("tidewatch-collector")).args([
        "query",
        "top-talkers",
        "--since",
        "1h",
        "--print-sql",
    ]));
    assert!(query.contains("LIMIT 10 BY vessel"), "{query}");
    std::fs::write(dir.path().join("schema.sql"), &schema).unwrap();
    std::fs::write(dir.path().join("query.sql"), &query).unwrap();
    let out = run_ok(
        Command::new("python3")
            .arg(root().join("tests/chdb/check_modern.py"))
            .arg(dir.path().join("schema.sql"))
            .arg(dir.path().join("query.sql"))
            .arg(tidewatch_collector::sink::MAX_DAYS_PER_INSERT.to_string()),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for (k, ok) in v["checks"].as_object().unwrap() {
        assert_eq!(ok, true, "chDB check {k} failed: {v}");
    }
}
