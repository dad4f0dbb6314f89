//! Flags both clients share, and the command-line conventions: bad flags
//! give one clear line on stderr and exit 64 (EX_USAGE).

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, builder::BoolishValueParser, error::ErrorKind};
use hyper::header::{HeaderName, HeaderValue};

use crate::{
    calling_loop::LoopConfig,
    duration::{format_duration, parse_duration},
    summary::Summary,
};

/// sysexits.h EX_USAGE: the command was used incorrectly.
pub const EX_USAGE: u8 = 64;

/// sysexits.h EX_UNAVAILABLE: a service the command needs did not answer
/// (client-grpc: the `--dns-server` at start-up).
pub const EX_UNAVAILABLE: u8 = 69;

#[derive(Args, Debug, Clone)]
pub struct LoopArgs {
    /// Pause after each call (per caller): 100ms, 2s, 1.5s, 0.
    #[arg(long, env = "CLIENT_INTERVAL", default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,

    /// Stop after this many calls; 0 = until SIGINT/SIGTERM.
    #[arg(long, env = "CLIENT_COUNT", default_value_t = 0, value_name = "N")]
    pub count: u64,

    /// Per-call deadline.
    #[arg(long, env = "CLIENT_TIMEOUT", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// One JSON object per call and a JSON summary, for scripts.
    #[arg(long, env = "CLIENT_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,

    /// Also print the summary after every N calls; 0 = only at the end.
    #[arg(
        long,
        env = "CLIENT_SUMMARY_EVERY",
        default_value_t = 0,
        value_name = "N"
    )]
    pub summary_every: u64,

    /// Parallel callers sharing one numbering.
    #[arg(long, env = "CLIENT_CONCURRENCY", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Extra request header / gRPC metadata, `NAME: VALUE` (repeatable):
    /// e.g. for VirtualService header matches, or the echo server's
    /// `x-echo-response-header`.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl LoopArgs {
    pub fn loop_config(&self) -> Result<LoopConfig, String> {
        if self.timeout.is_zero() {
            return Err("--timeout must be greater than 0".into());
        }
        Ok(LoopConfig {
            interval: self.interval,
            count: self.count,
            summary_every: self.summary_every,
            json: self.json,
        })
    }

    /// For the start-up log line.
    pub fn describe(&self) -> String {
        format!(
            "interval {}, count {}, timeout {}, concurrency {}",
            format_duration(self.interval),
            match self.count {
                0 => "unlimited".to_owned(),
                n => n.to_string(),
            },
            format_duration(self.timeout),
            self.concurrency
        )
    }
}

/// `NAME: VALUE` (curl and grpcurl style).
pub fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| format!("expected NAME: VALUE, got {raw:?}"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name {:?}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

/// Parses the command line; `--help`/`--version` print and exit 0, anything
/// wrong prints one line and exits 64.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            std::process::exit(0)
        }
        Err(e) => {
            // clap's first paragraph, on one line (a missing flag is named on
            // the line after "required arguments were not provided:").
            let rendered = e.render().to_string();
            let first: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .take_while(|line| !line.is_empty())
                .collect();
            usage_exit(first.join(" ").trim_start_matches("error: "))
        }
    }
}

/// One clear line on stderr, exit 64.
pub fn usage_exit(message: &str) -> ! {
    let program = std::env::args()
        .next()
        .and_then(|p| p.rsplit('/').next().map(str::to_owned))
        .unwrap_or_else(|| "client".into());
    eprintln!("{program}: {message} (see --help)");
    std::process::exit(EX_USAGE.into())
}

/// Diagnostics go to stderr (stdout carries the calls); `RUST_LOG` overrides.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
}

/// Non-zero only when every call failed.
pub fn exit_code(summary: &Summary) -> ExitCode {
    if summary.all_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_flag_is_name_colon_value() {
        let (name, value) = parse_header("x-echo-response-header: x-upstream-pod=fake").unwrap();
        assert_eq!(name.as_str(), "x-echo-response-header");
        assert_eq!(value, "x-upstream-pod=fake");
        assert!(parse_header("no-colon").is_err());
        assert!(parse_header("bad name: v").is_err());
    }

    #[derive(Parser, Debug)]
    struct Test {
        #[command(flatten)]
        common: LoopArgs,
    }

    #[test]
    fn defaults_are_the_go_demos() {
        let args = Test::try_parse_from(["t"]).unwrap().common;
        assert_eq!(args.interval, Duration::from_secs(1));
        assert_eq!(args.count, 0);
        assert_eq!(args.timeout, Duration::from_secs(5));
        assert_eq!(args.concurrency, 1);
        assert!(!args.json);
    }

    #[test]
    fn bad_values_are_rejected_by_the_parser() {
        for bad in [
            &["t", "--interval", "1x"][..],
            &["t", "--interval", "5"],
            &["t", "--concurrency", "0"],
            &["t", "--count", "-1"],
            &["t", "--header", "nope"],
        ] {
            assert!(Test::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let zero = Test::try_parse_from(["t", "--timeout", "0"])
            .unwrap()
            .common;
        assert!(zero.loop_config().is_err());
    }
}
