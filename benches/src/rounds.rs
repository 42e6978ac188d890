//! Summaries of alternating rounds (`--rounds`), shared by the workloads: every system
//! runs once per round, in turn, so that a stall of this shared machine lands on one
//! round of one system rather than deciding a figure. A table row gives the [`median`]
//! of each figure over the rounds, and a ratio cell the median of the rounds' own ratios
//! (each from two runs close in time) with their range ([`spread`]).

/// `--rounds`, for every workload that takes it.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Rounds {
    /// Alternating rounds: each round runs every system once, in turn, and the table
    /// gives the median of each figure and of each round's ratio, with the range of the
    /// ratios. On a noisy machine a single run can catch one system in a stall; more
    /// rounds make that matter less.
    #[arg(id = "rounds", long = "rounds", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub count: u32,
}

impl Rounds {
    /// The line printed above a table of several rounds.
    pub fn caption(&self) -> Option<String> {
        (self.count > 1).then(|| {
            format!(
                "Median of {} alternating rounds; a ratio is the median of the rounds' ratios, their range in brackets.\n",
                self.count
            )
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The rounds' ratios as a table cell: `—` for none, `2.00` for one, and
/// `2.00 (1.50–2.50)` (median, then lowest and highest) for several.
pub fn spread(ratios: &[f64]) -> String {
    let lo = ratios.iter().copied().reduce(f64::min);
    let hi = ratios.iter().copied().reduce(f64::max);
    match (lo, hi) {
        (Some(lo), Some(hi)) if ratios.len() > 1 => {
            format!("{:.2} ({lo:.2}–{hi:.2})", median(ratios.iter().copied()))
        }
        (Some(one), _) => format!("{one:.2}"),
        _ => "—".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median([]), 0.0);
        assert_eq!(spread(&[]), "—");
        assert_eq!(spread(&[2.0]), "2.00");
        assert_eq!(spread(&[2.5, 1.5, 2.0]), "2.00 (1.50–2.50)");
        assert_eq!(Rounds { count: 1 }.caption(), None);
        assert!(Rounds { count: 3 }
            .caption()
            .is_some_and(|c| c.starts_with("Median of 3")));
    }
}
