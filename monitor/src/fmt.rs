//! Small formatting helpers shared by the view and the CLI, and the parsers of the
//! durations and rates the CLI takes.

use std::time::Duration;

/// Parses a duration the way [`humantime`] does (`250ms`, `5s`, `2m`, `1h 30m`,
/// `1day`, …). For compatibility with earlier versions, a bare number is seconds (`30`)
/// and a decimal number takes any of humantime's units (`1.5s`, `0.5h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let hint = || format!("not a duration: {s:?} (try 250ms, 5s, 5m, 1h)");
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(d);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let unit = unit.trim();
    let per = if unit.is_empty() {
        Duration::from_secs(1)
    } else {
        humantime::parse_duration(&format!("1{unit}")).map_err(|_| hint())?
    };
    let v: f64 = num.parse().map_err(|_| hint())?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(hint());
    }
    Duration::try_from_secs_f64(per.as_secs_f64() * v).map_err(|_| hint())
}

/// [`parse_duration`] in whole milliseconds (rounded).
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    parse_duration(s).map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
}

/// Parses a rate as events per second: `1/s`, `30/min`, `100/h` (the unit is any of
/// [`humantime`]'s: `s`, `sec`, `m`, `min`, `h`, `hour`, `day`, …), or a plain number
/// (per second).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, per_s) = match s.split_once('/') {
        Some((n, unit)) => {
            let unit = unit.trim();
            let per = humantime::parse_duration(&format!("1{unit}"))
                .map_err(|_| format!("unknown rate unit {unit:?} (try 1/s, 30/min)"))?;
            (n, per.as_secs_f64())
        }
        None => (s, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a rate: {s:?} (try 1/s, 30/min)"))?;
    if !(v >= 0.0 && v.is_finite()) {
        return Err(format!("not a rate: {s:?}"));
    }
    Ok(v / per_s)
}

/// `1234567` → `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string().into_bytes();
    let groups: Vec<&str> = digits
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.join(",")
}

/// Bytes in binary units: `512 B`, `12.3 KiB`, `4.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// A duration in ms as `350ms`, `12s`, `3m12s`, `2h05m`, `3d04h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600)
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// ms since the epoch as `HH:MM:SS` (UTC).
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// µs since the epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_us(us: u64) -> String {
    let ms = us / 1000;
    let s = ms / 1000;
    let (y, mo, d) = civil((s / 86_400) as i64);
    format!("{y:04}-{mo:02}-{d:02}T{}.{:03}Z", clock(ms), ms % 1000)
}

/// ms since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn datetime_ms(ms: u64) -> String {
    let s = ms / 1000;
    let (y, mo, d) = civil((s / 86_400) as i64);
    format!("{y:04}-{mo:02}-{d:02} {} UTC", clock(ms))
}

/// The file name part of a path.
pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// µs as `0.42ms`.
pub fn micros_as_ms(us: u64) -> String {
    format!("{:.2}ms", us as f64 / 1000.0)
}

/// A rate, short: `0`, `0.4`, `12.5`, `340`, `12.3k`, `4.1M`.
pub fn rate(v: f64) -> String {
    if v <= 0.0 || !v.is_finite() {
        "0".into()
    } else if v < 100.0 {
        let s = format!("{v:.1}");
        s.strip_suffix(".0").map(str::to_string).unwrap_or(s)
    } else if v < 10_000.0 {
        format!("{v:.0}")
    } else if v < 10_000_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else {
        format!("{:.1}M", v / 1e6)
    }
}

/// A count, short: `950`, `12.3k`, `4.1M`.
pub fn short_count(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else if n < 10_000_000 {
        format!("{:.1}k", n as f64 / 1000.0)
    } else {
        format!("{:.1}M", n as f64 / 1e6)
    }
}

/// A sink's figures in one short line: `kafka · 3 in flight · p50/p99 1.20ms / 4.00ms`.
pub fn sink_summary(s: &walspool_wal::SinkMetrics) -> String {
    format!(
        "{} · {} in flight · p50/p99 {} / {}",
        s.kind,
        count(s.in_flight),
        micros_as_ms(s.p50_us),
        micros_as_ms(s.p99_us)
    )
}

/// A sink's records per destination, busiest first then by name:
/// `audit.login 5,000, audit.logout 230` (`-` when none).
pub fn destinations(s: &walspool_wal::SinkMetrics) -> String {
    if s.per_destination.is_empty() {
        return "-".into();
    }
    let mut v: Vec<(&String, &u64)> = s.per_destination.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(d, n)| format!("{d} {}", count(**n)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration_ms("5m"), Ok(300_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1_500));
        assert_eq!(parse_duration_ms("0.5h"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("1h 30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("1day"), Ok(86_400_000));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert_eq!(parse_rate("1/s"), Ok(1.0));
        assert_eq!(parse_rate("30/min"), Ok(0.5));
        assert_eq!(parse_rate("36/h"), Ok(0.01));
        assert_eq!(parse_rate("2"), Ok(2.0));
        assert!(parse_rate("1/fortnight").is_err());
        assert!(parse_rate("-1/s").is_err());
    }

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(1234567), "1,234,567");
        assert_eq!(count(123), "123");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(12 * 1024 + 300), "12.3 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(age(350), "350ms");
        assert_eq!(age(192_000), "3m12s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(rfc3339_us(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_us(1_795_000_000_123_456),
            "2026-11-18T11:06:40.123Z"
        );
        assert_eq!(datetime_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(base_name("/a/b/0001.wal"), "0001.wal");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(2.0), "2");
        assert_eq!(rate(12.34), "12.3");
        assert_eq!(rate(340.2), "340");
        assert_eq!(rate(12_345.0), "12.3k");
        assert_eq!(short_count(950), "950");
        assert_eq!(short_count(123_456), "123.5k");
        let s = walspool_wal::SinkMetrics::new("nats")
            .in_flight(1_024)
            .latency_us(1_200, 40_000, 90_000)
            .per_destination(
                [
                    ("audit.b".to_string(), 7),
                    ("audit.a".to_string(), 7),
                    ("audit.z".to_string(), 12_000),
                ]
                .into(),
            );
        assert_eq!(
            sink_summary(&s),
            "nats · 1,024 in flight · p50/p99 1.20ms / 40.00ms"
        );
        assert_eq!(destinations(&s), "audit.z 12,000, audit.a 7, audit.b 7");
        assert_eq!(destinations(&walspool_wal::SinkMetrics::new("x")), "-");
    }
}
