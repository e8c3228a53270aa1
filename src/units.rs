//! Human-readable sizes and counts for reports and `lit-engine info` (`1.50 KiB`, `272.47K`).
//! Plain formatting with no dependency, so every layer can print sizes the same way.

/// `1536` → `"1.50 KiB"`: binary units, three significant figures; plain bytes below 1 KiB.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", three_figures(value), UNITS[unit])
}

/// `272474` → `"272.47K"`, `40551040` → `"40.55M"`: decimal units for counts (parameters, MACs).
pub fn human_count(n: u64) -> String {
    const UNITS: [(f64, &str); 4] = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")];
    for (scale, unit) in UNITS {
        if n as f64 >= scale {
            return format!("{:.2}{unit}", n as f64 / scale);
        }
    }
    n.to_string()
}

/// Two decimals below 10, one below 100, none above: 1.50, 13.2, 272.
fn three_figures(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_and_counts() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.00 KiB");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(4 * 272_474), "1.04 MiB");
        assert_eq!(human_bytes(150 * 1024 * 1024), "150 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(human_count(999), "999");
        assert_eq!(human_count(272_474), "272.47K");
        assert_eq!(human_count(40_551_040), "40.55M");
    }
}
