//! `thaw bench --smoke`: the cold-start suite runs (thaw's setups, a few samples) and writes
//! a well-formed table, CSV, JSON summary and SVG chart, so the suite cannot rot unnoticed.

use std::process::Command;

const THAW_SETUPS: [&str; 4] = [
    "thaw, cold from disk",
    "thaw, after deploy",
    "thaw, after deploy (--fast-deploy)",
    "thaw, warm (pool hit)",
];

#[test]
fn the_cold_start_suite_writes_its_results() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_thaw"))
        .args(["bench", "--smoke", "--out"])
        .arg(out.path())
        .arg("--wasm")
        .arg(thaw_test_functions::HELLO)
        .env("THAW_INSTANCE_SLOTS", "32")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "thaw bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let dirs: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "one results folder: {dirs:?}");
    let dir = &dirs[0];
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(
        name.len() > 11 && name.as_bytes()[4] == b'-' && name.as_bytes()[10] == b'-',
        "named <date>-<host>: {name}"
    );

    // The table: a header, and a row per thaw setup with its numbers.
    let table = std::fs::read_to_string(dir.join("table.md")).unwrap();
    assert!(table.starts_with("| setup | median | p10 | p90 | p99 | n | × thaw cold |"));
    for setup in THAW_SETUPS {
        let row = table
            .lines()
            .find(|l| l.starts_with(&format!("| {setup} |")))
            .unwrap_or_else(|| panic!("no row for {setup}:\n{table}"));
        assert_eq!(row.matches('|').count(), 8, "{row}");
        assert!(row.contains(" 3 |"), "3 samples: {row}");
    }
    assert!(
        stdout.contains("| thaw, cold from disk |"),
        "the table is printed"
    );

    // The CSV: every sample, positive.
    let csv = std::fs::read_to_string(dir.join("samples.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("setup,sample,micros"));
    let rows: Vec<_> = lines.collect();
    assert_eq!(rows.len(), 3 * THAW_SETUPS.len(), "{csv}");
    for row in &rows {
        let (setup, rest) = row.rsplit_once(',').unwrap();
        let micros: f64 = rest.parse().unwrap_or_else(|_| panic!("{row}"));
        assert!(micros > 0.0, "{row}");
        assert!(
            THAW_SETUPS
                .iter()
                .any(|s| setup.starts_with(&format!("\"{s}\""))),
            "{row}"
        );
    }

    // The JSON summary: the machine, and each setup's statistics in order.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert!(summary["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(summary["machine"]["kernel"].as_str().is_some());
    let setups = summary["setups"].as_array().unwrap();
    assert_eq!(setups.len(), THAW_SETUPS.len());
    for s in setups {
        let (p10, median, p90) = (
            s["p10_us"].as_f64().unwrap(),
            s["median_us"].as_f64().unwrap(),
            s["p90_us"].as_f64().unwrap(),
        );
        assert!(0.0 < p10 && p10 <= median && median <= p90, "{s}");
        assert_eq!(s["n"], 3);
    }
    assert_eq!(setups[0]["ratio_to_thaw_cold"], 1.0);
    // Every cold sample really was a load from disk, every warm one a pool hit.
    assert_eq!(setups[0]["start_kinds"]["disk"], 3, "{}", setups[0]);
    assert_eq!(setups[3]["start_kinds"]["pool-hit"], 3, "{}", setups[3]);
    // Smoke mode says what it left out rather than pretending.
    assert!(summary["skipped"].is_array());
    let machine: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("machine.json")).unwrap()).unwrap();
    assert_eq!(machine, summary["machine"]);

    // The chart: one SVG document naming every setup.
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), 1);
    for setup in THAW_SETUPS {
        assert!(svg.contains(setup), "the chart names {setup}");
    }
}
