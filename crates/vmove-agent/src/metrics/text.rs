//! Prometheus' text exposition format (version 0.0.4), written by hand: families with
//! `# HELP` and `# TYPE`, samples with escaped labels, and cumulative histograms.

/// A histogram with fixed bucket bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds, `+Inf` implied).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    /// Records one observation.
    pub fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// Text being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// Escapes a label value (`\`, `"`, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value: integers without a fraction, `+Inf`, `NaN`.
fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

impl Text {
    /// Starts a family: `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, l: &[(&str, &str)], v: f64) {
        self.out.push_str(&format!("{name}{} {}\n", labels(l), number(v)));
    }

    /// A histogram's samples: cumulative buckets, `+Inf`, sum and count.
    pub fn histogram(&mut self, name: &str, l: &[(&str, &str)], h: &Histogram) {
        let mut acc = 0;
        let bucket = format!("{name}_bucket");
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            acc += c;
            let le = number(*b);
            let mut with = l.to_vec();
            with.push(("le", &le));
            self.sample(&bucket, &with, acc as f64);
        }
        let mut with = l.to_vec();
        with.push(("le", "+Inf"));
        self.sample(&bucket, &with, h.count as f64);
        self.sample(&format!("{name}_sum"), l, h.sum);
        self.sample(&format!("{name}_count"), l, h.count as f64);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_histograms_and_escapes() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        let mut t = Text::default();
        t.family("x_total", "counter", "Things.\nMore.");
        t.sample("x_total", &[("mode", "live"), ("odd", "a\"b\\c\nd")], 3.0);
        t.family("d_seconds", "histogram", "Downtime.");
        t.histogram("d_seconds", &[], &h);
        assert_eq!(
            t.finish(),
            "# HELP x_total Things.\\nMore.\n# TYPE x_total counter\n\
             x_total{mode=\"live\",odd=\"a\\\"b\\\\c\\nd\"} 3\n\
             # HELP d_seconds Downtime.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.1\"} 1\nd_seconds_bucket{le=\"1\"} 2\nd_seconds_bucket{le=\"+Inf\"} 3\n\
             d_seconds_sum 7.55\nd_seconds_count 3\n"
        );
        assert_eq!(number(0.005), "0.005");
        assert_eq!(number(f64::INFINITY), "+Inf");
    }
}
