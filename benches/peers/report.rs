//! Result rows: the CSV, the table, and the `median` rows over processes.

use std::path::PathBuf;

use crate::harness::median;

const HEADER: [&str; 8] = [
    "scenario", "runtime", "n", "process", "ours_ns", "peer", "peer_ns", "ratio",
];

/// One line of the CSV: ours against one peer in one scenario, runtime, N and process.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub runtime: String,
    pub n: usize,
    /// `1` to `K`, or `median`.
    pub process: String,
    /// ns per child or per call (bytes per child for `6-`).
    pub ours: f64,
    pub peer: String,
    pub peer_value: f64,
    /// ours / peer (in `median` rows: the median of the per-process ratios).
    pub ratio: f64,
}

impl Row {
    pub fn new(
        scenario: &str,
        runtime: &str,
        n: usize,
        ours: f64,
        peer: &str,
        peer_value: f64,
    ) -> Row {
        Row {
            scenario: scenario.to_string(),
            runtime: runtime.to_string(),
            n,
            process: "1".to_string(),
            ours,
            peer: peer.to_string(),
            peer_value,
            ratio: ours / peer_value,
        }
    }

    fn fields(&self) -> [String; 8] {
        [
            self.scenario.clone(),
            self.runtime.clone(),
            self.n.to_string(),
            self.process.clone(),
            format!("{:.2}", self.ours),
            self.peer.clone(),
            format!("{:.2}", self.peer_value),
            format!("{:.3}", self.ratio),
        ]
    }

    pub fn to_csv(&self) -> String {
        self.fields().join(",")
    }

    /// Reads back a line written by [`to_csv`](Self::to_csv).
    pub fn parse(line: &str) -> Option<Row> {
        let [scenario, runtime, n, process, ours, peer, peer_value, ratio] =
            line.split(',').collect::<Vec<_>>().try_into().ok()?;
        Some(Row {
            scenario: scenario.to_string(),
            runtime: runtime.to_string(),
            n: n.parse().ok()?,
            process: process.to_string(),
            ours: ours.parse().ok()?,
            peer: peer.to_string(),
            peer_value: peer_value.parse().ok()?,
            ratio: ratio.parse().ok()?,
        })
    }

    fn same_measurement(&self, other: &Row) -> bool {
        (&self.scenario, &self.runtime, self.n, &self.peer)
            == (&other.scenario, &other.runtime, other.n, &other.peer)
    }
}

/// The rows of K processes, numbered `1..=K`; with K > 1, after each measurement's K rows
/// a `median` row holding the median of each numeric column over the processes.
pub fn number_and_median(per_process: Vec<Vec<Row>>) -> Vec<Row> {
    let per_process: Vec<Vec<Row>> = per_process
        .into_iter()
        .enumerate()
        .map(|(i, rows)| {
            rows.into_iter()
                .map(|row| Row {
                    process: (i + 1).to_string(),
                    ..row
                })
                .collect()
        })
        .collect();
    let Some(first) = per_process.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for template in first {
        let group: Vec<&Row> = per_process
            .iter()
            .filter_map(|rows| rows.iter().find(|row| row.same_measurement(template)))
            .collect();
        out.extend(group.iter().map(|&row| row.clone()));
        if per_process.len() > 1 {
            let column = |value: fn(&Row) -> f64| median(group.iter().map(|r| value(r)).collect());
            out.push(Row {
                process: "median".to_string(),
                ours: column(|r| r.ours),
                peer_value: column(|r| r.peer_value),
                ratio: column(|r| r.ratio),
                ..template.clone()
            });
        }
    }
    out
}

/// `$CARGO_TARGET_DIR/bench/peers.csv`, else `target/bench/peers.csv`, relative to the
/// workspace root.
pub fn csv_path() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    target.join("bench").join("peers.csv")
}

pub fn write_csv(rows: &[Row]) -> std::io::Result<PathBuf> {
    let path = csv_path();
    std::fs::create_dir_all(path.parent().expect("a directory"))?;
    let mut text = HEADER.join(",") + "\n";
    for row in rows {
        text += &row.to_csv();
        text.push('\n');
    }
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The rows as an aligned table: text columns left, numbers right.
pub fn print_table(rows: &[Row]) {
    let cells: Vec<[String; 8]> = std::iter::once(HEADER.map(str::to_string))
        .chain(rows.iter().map(Row::fields))
        .collect();
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|c| cells.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    let numeric = [false, false, true, true, true, false, true, true];
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(numeric)
            .map(|((cell, &width), right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
