//! Issue 6's goals (and issue 13's throughput target), judged against a
//! run's report.

use crate::{
    configs::Variant,
    report::{self, Goal, Report, Verdict, median_ratio, verdict},
};

/// Churn size the RSS goal is stated for.
pub const CHURN_GOAL_CONNECTIONS: u64 = 100_000;

/// Issue 6's goals against this run. Size limits are read strictly
/// (1 KB = 1000 B, 1 MB = 1,000,000 B).
pub fn goals(report: &Report) -> Vec<Goal> {
    let judged = report.settings.judged();
    let timed = |ok: bool| {
        if judged {
            verdict(ok)
        } else {
            Verdict::NotJudged
        }
    };
    let mut goals = Vec::new();
    // Every "added" and ratio column is already relative to no filter.
    let (Some(tagger), Some(lua)) = (
        report.proxy_row(Variant::UpstreamTagger.key()),
        report.proxy_row(Variant::Lua.key()),
    ) else {
        return goals;
    };
    let ratio = tagger.ratio_vs_no_filter;
    goals.push(Goal {
        goal: "upstream-tagger throughput vs no filter".into(),
        target: match report.proxy_row(Variant::EmptyWasm.key()) {
            Some(empty) => format!(
                "≥ 0.75× (stretch 0.80×; the empty-filter floor here: {:.2}×)",
                empty.ratio_vs_no_filter
            ),
            None => "≥ 0.75× (stretch 0.80×)".into(),
        },
        measured: format!(
            "{ratio:.2}× (stretch {})",
            if ratio >= 0.80 { "met" } else { "not met" }
        ),
        verdict: timed(ratio >= 0.75),
    });
    // Issue 13's lower bar for direct_response: the empty-filter floor plus
    // the five host calls the filter needs.
    goals.push(Goal {
        goal: "upstream-tagger vs no filter, issue 13's target".into(),
        target: "≥ 0.66× (the empty-filter floor plus five host calls)".into(),
        measured: format!("{ratio:.2}×"),
        verdict: timed(ratio >= 0.66),
    });
    goals.push(Goal {
        goal: "upstream-tagger added Envoy CPU per request".into(),
        target: "≤ +4 µs".into(),
        measured: format!("{:+.1} µs", tagger.added_cpu_us),
        verdict: timed(tagger.added_cpu_us <= 4.0),
    });
    let vs_lua = median_ratio(&tagger.req_per_sec, &lua.req_per_sec);
    goals.push(Goal {
        goal: "upstream-tagger vs the Lua equivalent".into(),
        target: "≥ 1.3× req/s".into(),
        measured: format!("{vs_lua:.2}×"),
        verdict: timed(vs_lua >= 1.3),
    });
    goals.push(Goal {
        goal: "unloaded latency added (1 connection, 1 in flight)".into(),
        target: "p50 ≤ +15 µs, p99 ≤ +25 µs".into(),
        measured: format!(
            "p50 {:+.0} µs, p99 {:+.0} µs",
            tagger.added_p50_us, tagger.added_p99_us
        ),
        verdict: timed(tagger.added_p50_us <= 15.0 && tagger.added_p99_us <= 25.0),
    });
    if let [without, with] = &report.churn[..] {
        let diff = with.rss_growth_bytes - without.rss_growth_bytes;
        let full = with.connections >= CHURN_GOAL_CONNECTIONS;
        goals.push(Goal {
            goal: format!(
                "Envoy RSS growth after {} short connections, filter vs none",
                report::thousands(with.connections as f64)
            ),
            target: "≤ 1 MB after 100,000".into(),
            measured: format!(
                "{:+.2} MB ({:+.2} with, {:+.2} without)",
                diff as f64 / 1e6,
                with.rss_growth_bytes as f64 / 1e6,
                without.rss_growth_bytes as f64 / 1e6
            ),
            verdict: if full {
                verdict(diff <= 1_000_000)
            } else {
                Verdict::NotJudged
            },
        });
        if let (Some(max), Some(cap)) = (with.tracked_max, with.cap) {
            goals.push(Goal {
                goal: "tracked connections never above the cap".into(),
                target: format!("≤ {}", report::thousands(cap as f64)),
                measured: format!(
                    "max {} seen, {} evicted",
                    report::thousands(max as f64),
                    report::thousands(with.evicted.unwrap_or(0) as f64)
                ),
                verdict: verdict(max <= i64::from(cap)),
            });
        }
    }
    if let Some(size) = tagger.module_bytes {
        // Issue 13 traded issue 6's 128 KB for serde/serde_json: the module is
        // fetched once per sidecar, a hand-written parser is reviewed by nobody.
        goals.push(Goal {
            goal: "module size".into(),
            target: "≤ 256 KB (serde; was 128 KB with a hand-written reader)".into(),
            measured: format!("{} B", report::thousands(size as f64)),
            verdict: verdict(size <= 256_000),
        });
    }
    if let Some(echo) = report.servers.iter().find(|s| s.key == "echo-server") {
        goals.push(Goal {
            goal: "echo server getInfo vs tonic hello-world".into(),
            target: "≥ 0.9× req/s".into(),
            measured: format!("{:.2}×", echo.ratio_vs_hello),
            verdict: timed(echo.ratio_vs_hello >= 0.9),
        });
    }
    goals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::report;

    fn verdict_of(goals: &[Goal], name: &str) -> Verdict {
        goals
            .iter()
            .find(|g| g.goal.contains(name))
            .unwrap_or_else(|| panic!("{name} missing"))
            .verdict
    }

    #[test]
    fn goals_are_judged_against_issue_6_thresholds() {
        let goals = goals(&report(false, 80.0, 127_999, 100_000));
        assert_eq!(verdict_of(&goals, "throughput vs no filter"), Verdict::Met);
        assert_eq!(
            verdict_of(&goals, "issue 13's target"),
            Verdict::Met,
            "0.80×"
        );
        assert_eq!(verdict_of(&goals, "added Envoy CPU"), Verdict::Met);
        assert_eq!(
            verdict_of(&goals, "vs the Lua equivalent"),
            Verdict::Met,
            "80/50 = 1.6×"
        );
        assert_eq!(
            verdict_of(&goals, "unloaded latency"),
            Verdict::NotMet,
            "p99 +30 > +25"
        );
        assert_eq!(
            verdict_of(&goals, "RSS growth"),
            Verdict::Met,
            "1.1 MB vs 0.1 MB: +1.0 MB"
        );
        assert_eq!(verdict_of(&goals, "never above the cap"), Verdict::Met);
        assert_eq!(verdict_of(&goals, "module size"), Verdict::Met);
        assert_eq!(verdict_of(&goals, "echo server"), Verdict::Met);

        let goals = super::goals(&report(false, 60.0, 256_001, 100_000));
        assert_eq!(
            verdict_of(&goals, "throughput vs no filter"),
            Verdict::NotMet
        );
        assert_eq!(
            verdict_of(&goals, "issue 13's target"),
            Verdict::NotMet,
            "0.60× < 0.66×"
        );
        assert_eq!(
            verdict_of(&goals, "vs the Lua equivalent"),
            Verdict::NotMet,
            "60/50 = 1.2×"
        );
        assert_eq!(
            verdict_of(&goals, "module size"),
            Verdict::NotMet,
            "256 KB read as 256,000 B"
        );
    }

    #[test]
    fn short_runs_leave_timing_goals_unjudged() {
        let goals = goals(&report(true, 80.0, 100_000, 3_000));
        for name in [
            "throughput vs no filter",
            "issue 13's target",
            "added Envoy CPU",
            "vs the Lua equivalent",
            "unloaded latency",
            "echo server",
            "RSS growth",
        ] {
            assert_eq!(verdict_of(&goals, name), Verdict::NotJudged, "{name}");
        }
        assert_eq!(
            verdict_of(&goals, "never above the cap"),
            Verdict::Met,
            "a bound, not a timing"
        );
        assert_eq!(verdict_of(&goals, "module size"), Verdict::Met);

        // Not --quick, but fewer than three rounds: not judged either.
        let mut two_rounds = report(false, 80.0, 100_000, 100_000);
        two_rounds.settings.rounds = 2;
        let judged = super::goals(&two_rounds);
        assert_eq!(
            verdict_of(&judged, "throughput vs no filter"),
            Verdict::NotJudged
        );
        assert!(two_rounds.markdown().contains("too few to judge"));
    }
}
