//! Durations as users write them on the command line and in campaign files: `90`, `90s`, `9m`,
//! `1h30m`, `1.5h`.

use std::time::Duration;

/// The longest duration accepted (a year): larger values are typos.
const MAX_SECONDS: f64 = 366.0 * 24.0 * 3600.0;

/// Parse `text` as a sum of `<number><unit>` parts (units `h`, `m`, `s`; a bare number is
/// seconds). The error says what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || format!("`{text}` is not a duration: expected e.g. 90s, 9m, 1h30m");
    if t.is_empty() {
        return Err(bad());
    }
    let mut seconds = 0.0;
    let mut number = String::new();
    for c in t.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'h' | 'm' | 's' => {
                let n: f64 = number.parse().map_err(|_| bad())?;
                seconds += n * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                number.clear();
            }
            _ => return Err(bad()),
        }
    }
    if !number.is_empty() {
        seconds += number.parse::<f64>().map_err(|_| bad())?;
    }
    if !(seconds > 0.0 && seconds <= MAX_SECONDS) {
        return Err(format!(
            "`{text}`: a duration must be above 0 and at most a year"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `2m05s`, `45s`, `1h02m`: a short readable duration.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("9m"), Ok(Duration::from_secs(540)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        for bad in ["", "9x", "m", "0s", "-1s", "1e9h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }
}
