//! Output helpers: tables for people, JSON for programs.
use serde::Serialize;

/// Prints a value as JSON.
pub fn json(v: &impl Serialize) {
    match serde_json::to_string(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("vmove: cannot encode output: {e}"),
    }
}

/// Prints rows as an aligned table under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(|s| s.as_str()).collect());
    }
}

/// An error and its causes on one line (`what: why: root cause`), as `vmove` prints errors.
pub fn one_line(e: impl Into<anyhow::Error>) -> String {
    format!("{:#}", e.into()).replace('\n', " ")
}
