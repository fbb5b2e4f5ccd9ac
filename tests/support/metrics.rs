//! The metrics text as tests read it.

/// Asserts that the metrics text has every one of `needles`.
pub fn assert_metrics(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

/// The sum of the values of every sample in `metrics` (text exposition) whose
/// line starts with `prefix` (a family name, with labels begun if wanted).
pub fn sum_of(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
