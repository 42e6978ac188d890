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

/// Measures every configuration once per round, in turn (a, b, c, a, b, c, …), and
/// returns each configuration's figures, one per round, in order.
pub async fn alternate<C, M>(
    rounds: &Rounds,
    configs: &[C],
    mut measure: impl AsyncFnMut(&C) -> anyhow::Result<M>,
) -> anyhow::Result<Vec<Vec<M>>> {
    let mut figures: Vec<Vec<M>> = configs.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds.count {
        for (config, own) in configs.iter().zip(&mut figures) {
            own.push(measure(config).await?);
        }
    }
    Ok(figures)
}

/// Per configuration, each round's ratio rtc / this of `figure`, against the last rtc
/// configuration listed before it; empty for rtc's own configurations, for a rival with
/// no rtc before it, and for rounds where the rival's figure is 0.
pub fn ratios<C, M>(
    configs: &[C],
    figures: &[Vec<M>],
    is_rtc: impl Fn(&C) -> bool,
    figure: impl Fn(&M) -> f64,
) -> Vec<Vec<f64>> {
    let mut rtc = None;
    configs
        .iter()
        .zip(figures)
        .map(|(config, own)| {
            if is_rtc(config) {
                rtc = Some(own);
                return Vec::new();
            }
            rtc.map_or_else(Vec::new, |rtc: &Vec<M>| {
                rtc.iter()
                    .zip(own)
                    .map(|(r, m)| (figure(r), figure(m)))
                    .filter(|&(_, m)| m > 0.0)
                    .map(|(r, m)| r / m)
                    .collect()
            })
        })
        .collect()
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

    /// Rounds alternate the configurations, and each rival's ratios come from the same
    /// rounds of the rtc configuration listed last before it.
    #[tokio::test]
    async fn rounds_alternate_and_ratios_pair_the_same_round() {
        let configs = ["rtc", "rival", "rtc", "rival"];
        let mut calls = Vec::new();
        let mut n = 0.0;
        let figures = alternate(&Rounds { count: 2 }, &configs, async |c: &&str| {
            calls.push(*c);
            n += 1.0;
            Ok(n)
        })
        .await
        .unwrap();
        assert_eq!(
            calls,
            ["rtc", "rival", "rtc", "rival", "rtc", "rival", "rtc", "rival"]
        );
        assert_eq!(figures, [[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [4.0, 8.0]]);
        let r = ratios(&configs, &figures, |c| *c == "rtc", |m| *m);
        assert_eq!(
            r,
            [
                vec![],
                vec![1.0 / 2.0, 5.0 / 6.0],
                vec![],
                vec![3.0 / 4.0, 7.0 / 8.0]
            ]
        );
        let none_before = ratios(&["rival", "rtc"], &figures[..2], |c| *c == "rtc", |m| *m);
        assert_eq!(none_before, [Vec::<f64>::new(), vec![]]);

        let mut seen = 0;
        let failed = alternate(&Rounds { count: 3 }, &configs, async |_: &&str| {
            seen += 1;
            if seen == 2 {
                anyhow::bail!("stalled")
            }
            Ok(0.0)
        })
        .await;
        assert!(
            failed.is_err() && seen == 2,
            "a failed run ends the workload"
        );
    }

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
