//! `ticker`: a long-running workload (wasm32-wasip1) for logs, restarts and deletion.
//!
//! Prints `tick N <UTC time>` (N from 1) every `INTERVAL_MS` milliseconds (default 1000), forever, or only
//! `TICKS` times and then exits 0 when `TICKS` is set. A bad value is reported on stderr, exit code 2.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DEFAULT_INTERVAL_MS: u64 = 1000;

fn main() -> ExitCode {
    let settings = match Settings::from_env(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("ticker: {message}");
            return ExitCode::from(2);
        }
    };
    let mut n: u64 = 1;
    while settings.ticks.is_none_or(|ticks| n <= ticks) {
        // A clock before 1970 is a broken host; printing the epoch is more useful than stopping.
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        println!("tick {n} {}", rfc3339(since_epoch));
        n += 1;
        std::thread::sleep(settings.interval);
    }
    ExitCode::SUCCESS
}

#[derive(Debug, PartialEq, Eq)]
struct Settings {
    interval: Duration,
    ticks: Option<u64>,
}

impl Settings {
    fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let interval = match env("INTERVAL_MS") {
            None => DEFAULT_INTERVAL_MS,
            Some(ms) => match ms.trim().parse::<u64>() {
                // Zero would flood the log as fast as the host can take it.
                Ok(ms) if ms > 0 => ms,
                _ => return Err(format!("INTERVAL_MS={ms:?} is not a positive number of milliseconds")),
            },
        };
        let ticks = match env("TICKS") {
            None => None,
            Some(t) => Some(t.trim().parse::<u64>().map_err(|_| format!("TICKS={t:?} is not a count"))?),
        };
        Ok(Self { interval: Duration::from_millis(interval), ticks })
    }
}

/// `since_epoch` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC), without a date crate: days to civil date
/// is Howard Hinnant's `civil_from_days`.
fn rfc3339(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let millis = since_epoch.subsec_millis();
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_millis(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(Duration::from_secs(1_709_251_199)), "2024-02-29T23:59:59.000Z");
        assert_eq!(rfc3339(Duration::from_secs(4_107_542_400)), "2100-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(Duration::from_secs(1_767_225_599)), "2025-12-31T23:59:59.000Z");
    }

    #[test]
    fn settings_default_and_parse() {
        let none = |_: &str| None;
        assert_eq!(Settings::from_env(none), Ok(Settings { interval: Duration::from_millis(1000), ticks: None }));
        let some = |name: &str| match name {
            "INTERVAL_MS" => Some("250".to_owned()),
            "TICKS" => Some("3".to_owned()),
            _ => None,
        };
        assert_eq!(Settings::from_env(some), Ok(Settings { interval: Duration::from_millis(250), ticks: Some(3) }));
    }

    #[test]
    fn settings_reject_zero_and_garbage() {
        for (name, value) in [("INTERVAL_MS", "0"), ("INTERVAL_MS", "1s"), ("TICKS", "-1")] {
            let env = |n: &str| (n == name).then(|| value.to_owned());
            assert!(Settings::from_env(env).is_err(), "{name}={value}");
        }
    }
}
