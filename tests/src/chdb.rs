//! The same SQL on a modern ClickHouse: chDB (in-process ClickHouse from
//! PyPI) loaded with the schema `migrate` renders for 26.9 and the raw
//! tables exported from a stack's 18.16 server (`tests/chdb/check_pack.py`).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::{root, run_ok, Stack};

/// The raw tables chDB gets (every view is computed from them).
const TABLES: &[&str] = &[
    "flows_raw",
    "traffic_hourly_raw",
    "dest_hourly_raw",
    "assets_raw",
    "sensor_status_raw",
    "fleet_registry_raw",
];

/// Runs each (name, SQL) on chDB over `stack`'s data; returns
/// `{"chdb_version", "rows": {table: count}, "results": {name: [rows]}}`.
pub fn run(stack: &Stack, work: &Path, queries: &[(String, String)]) -> Value {
    let data = work.join("chdb-data");
    std::fs::create_dir_all(&data).unwrap();
    for table in TABLES {
        let rows = stack
            .query_tidewatch(&format!("SELECT * FROM {table} FORMAT JSONEachRow"))
            .unwrap();
        std::fs::write(data.join(format!("{table}.jsonl")), rows).unwrap();
    }
    let schema = work.join("chdb-schema.sql");
    std::fs::write(
        &schema,
        run_ok(
            stack
                .collector()
                // The fleet's dates are fixed (early 2026): keep them past the TTLs.
                .args(["migrate", "--print", "--server-version", "26.9"])
                .args([
                    "--flow-retention-days",
                    "3650",
                    "--rollup-retention-days",
                    "3650",
                ]),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("python3");
    cmd.arg(root().join("tests/chdb/check_pack.py"))
        .arg(&schema)
        .arg(&data);
    for (name, sql) in queries {
        let f = work.join(format!("{name}.sql"));
        std::fs::write(&f, sql).unwrap();
        cmd.arg(f);
    }
    serde_json::from_str(run_ok(&mut cmd).trim()).unwrap()
}
