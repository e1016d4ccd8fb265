//! Kubernetes' canonical form of a quantity (`resource.Quantity.String()`), for messages: Kubernetes
//! prints `1.5Gi` as `1536Mi`, `0.5` as `500m` and `2000m` as `2` in its errors, and users compare those
//! messages with what a real cluster says. Stored objects keep the text users wrote; comparisons use
//! [`crate::validation::parse_quantity`].
//!
//! The arithmetic is exact (a decimal mantissa and exponent), as Go's `inf.Dec` is: floating point would
//! print `0.30000000000000004` where Kubernetes prints `300m`.

/// How a quantity is written, from its suffix; the canonical form keeps it (Go's `resource.Format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `Ki`, `Mi`, ... powers of 1024.
    BinarySi,
    /// No suffix, or `n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`.
    DecimalSi,
    /// `e3`, `E-2`.
    DecimalExponent,
}

/// The decimal suffixes and their powers of ten.
const DECIMAL_SUFFIXES: &[(&str, i32)] =
    &[("n", -9), ("u", -6), ("m", -3), ("", 0), ("k", 3), ("M", 6), ("G", 9), ("T", 12), ("P", 15), ("E", 18)];
/// The binary suffixes and their powers of 1024.
const BINARY_SUFFIXES: &[&str] = &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
/// Kubernetes rounds every quantity up to a multiple of 1n, its smallest unit.
const SMALLEST_EXPONENT: i32 = -9;
/// The largest binary quantity Kubernetes holds (`2^63 - 1`); larger ones are capped to it.
const MAX_BINARY: u128 = i64::MAX as u128;

/// A quantity's exact value: `mantissa * 10^exponent`, negated when `negative`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Exact {
    negative: bool,
    mantissa: u128,
    exponent: i32,
}

/// The format a quantity's text is written in, or None when it does not parse.
pub fn format_of(text: &str) -> Option<Format> {
    parse(text).map(|(_, format)| format)
}

/// `text` in Kubernetes' canonical form (`1536Mi` for `1.5Gi`), or None when it is no quantity or too
/// large to convert exactly (beyond 38 digits).
pub fn canonical(text: &str) -> Option<String> {
    let (exact, format) = parse(text)?;
    format_canonical(exact, format)
}

/// The canonical form of `value` written in `format`, for quantities Kubernetes computes rather than
/// parses (a pod's total over its containers). `value` is taken to 1n, Kubernetes' precision.
pub fn canonical_value(value: f64, format: Format) -> Option<String> {
    if !value.is_finite() {
        return None;
    }
    let magnitude = value.abs();
    // Whole numbers (memory in bytes) are exact as they are; a fraction is counted in nanos, where
    // rounding removes the float's noise.
    let exact = if magnitude.fract() == 0.0 && magnitude < u128::MAX as f64 {
        Exact { negative: value < 0.0, mantissa: magnitude as u128, exponent: 0 }
    } else {
        Exact { negative: value < 0.0, mantissa: (magnitude * 1e9).round() as u128, exponent: SMALLEST_EXPONENT }
    };
    format_canonical(exact, format)
}

/// Parses a quantity exactly, as Go's `ParseQuantity`: rounded up to 1n, binary ones capped at 2^63-1,
/// and a binary one below 1 counted as decimal.
fn parse(text: &str) -> Option<(Exact, Format)> {
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    let mantissa: u128 = if significant.is_empty() { 0 } else { significant.parse().ok()? };
    let mut exact = Exact { negative, mantissa, exponent: -i32::try_from(fraction.len()).ok()? };
    let format = if let Some(&(_, power)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        exact.exponent += power;
        Format::DecimalSi
    } else if let Some(power) = BINARY_SUFFIXES.iter().position(|s| *s == suffix).filter(|p| *p > 0) {
        exact.mantissa = exact.mantissa.checked_mul(1u128.checked_shl(10 * power as u32)?)?;
        Format::BinarySi
    } else {
        let power = suffix.strip_prefix(['e', 'E'])?;
        let digits = power.strip_prefix(['+', '-']).unwrap_or(power);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        exact.exponent = exact.exponent.checked_add(power.parse().ok()?)?;
        Format::DecimalExponent
    };
    let mut exact = round_up_to_nanos(exact);
    if format == Format::BinarySi && exceeds(exact, MAX_BINARY) {
        exact = Exact { negative, mantissa: MAX_BINARY, exponent: 0 };
    }
    let format = if format == Format::BinarySi && is_below_one(exact) { Format::DecimalSi } else { format };
    Some((exact, format))
}

/// Rounds a non-zero value up (away from zero) to a multiple of 1n.
fn round_up_to_nanos(exact: Exact) -> Exact {
    if exact.mantissa == 0 || exact.exponent >= SMALLEST_EXPONENT {
        return exact;
    }
    let mantissa = match 10u128.checked_pow((SMALLEST_EXPONENT - exact.exponent) as u32) {
        Some(divisor) => exact.mantissa.div_ceil(divisor),
        // A divisor beyond u128 exceeds every mantissa: what is left is the smallest unit.
        None => 1,
    };
    Exact { mantissa, exponent: SMALLEST_EXPONENT, ..exact }
}

/// Moves the factors of ten of the mantissa into the exponent.
fn without_trailing_zeros(mut exact: Exact) -> Exact {
    while exact.mantissa != 0 && exact.mantissa.is_multiple_of(10) {
        exact.mantissa /= 10;
        exact.exponent += 1;
    }
    exact
}

/// The magnitude as a whole number, when it is one and fits.
fn whole_value(exact: Exact) -> Option<u128> {
    let exact = without_trailing_zeros(exact);
    if exact.exponent < 0 {
        return None;
    }
    exact.mantissa.checked_mul(10u128.checked_pow(exact.exponent as u32)?)
}

/// Whether the magnitude is greater than `limit`.
fn exceeds(exact: Exact, limit: u128) -> bool {
    let exact = without_trailing_zeros(exact);
    if exact.exponent >= 0 {
        return whole_value(exact).is_none_or(|v| v > limit);
    }
    // A divisor beyond u128 leaves nothing whole.
    let Some(divisor) = 10u128.checked_pow(exact.exponent.unsigned_abs()) else { return false };
    let (whole, rest) = (exact.mantissa / divisor, exact.mantissa % divisor);
    whole > limit || (whole == limit && rest > 0)
}

fn is_below_one(exact: Exact) -> bool {
    let exact = without_trailing_zeros(exact);
    exact.exponent < 0 && 10u128.checked_pow(exact.exponent.unsigned_abs()).is_none_or(|one| exact.mantissa < one)
}

/// Go's `Quantity.CanonicalizeBytes`: binary quantities of at least 1024 that are whole as the largest
/// exact power of 1024; everything else as an integer mantissa with an exponent that is a multiple of 3,
/// as large as possible.
fn format_canonical(exact: Exact, format: Format) -> Option<String> {
    let exact = without_trailing_zeros(exact);
    if exact.mantissa == 0 {
        return Some("0".into());
    }
    let sign = if exact.negative { "-" } else { "" };
    if format == Format::BinarySi
        && let Some(mut whole) = whole_value(exact).filter(|v| *v >= 1024)
    {
        let mut power = 0;
        while whole.is_multiple_of(1024) && power + 1 < BINARY_SUFFIXES.len() {
            whole /= 1024;
            power += 1;
        }
        return Some(format!("{sign}{whole}{}", BINARY_SUFFIXES[power]));
    }
    let (mut mantissa, mut exponent) = (exact.mantissa, exact.exponent);
    // The largest decimal suffix is E: beyond it the mantissa grows instead.
    let largest = if format == Format::DecimalExponent { i32::MAX } else { 18 };
    while exponent.rem_euclid(3) != 0 || exponent > largest {
        mantissa = mantissa.checked_mul(10)?;
        exponent -= 1;
    }
    let suffix = match format {
        Format::DecimalExponent if exponent == 0 => String::new(),
        Format::DecimalExponent => format!("e{exponent}"),
        _ => DECIMAL_SUFFIXES.iter().find(|(_, power)| *power == exponent)?.0.to_string(),
    };
    Some(format!("{sign}{mantissa}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_print_as_kubernetes_prints_them() {
        for (text, expected) in [
            ("64Mi", "64Mi"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1.5Ki", "1536"),
            ("512", "512"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("2000m", "2"),
            ("100m", "100m"),
            ("0.1", "100m"),
            ("100M", "100M"),
            ("1200M", "1200M"),
            ("1e3", "1e3"),
            ("12e2", "1200"),
            ("1E-3", "1e-3"),
            ("0.0000000001", "1n"),
            ("0Mi", "0"),
            ("-1", "-1"),
            ("+2k", "2k"),
            ("1000000000000000000000", "1000E"),
            ("16Ei", "9223372036854775807"),
        ] {
            assert_eq!(canonical(text).as_deref(), Some(expected), "{text}");
        }
        for text in ["", "lots", "1.2.3", "1Kb", "e3", "1e", "."] {
            assert_eq!(canonical(text), None, "{text}");
        }
    }

    #[test]
    fn computed_totals_keep_the_format_of_their_parts() {
        assert_eq!(canonical_value(4.0, Format::DecimalSi).as_deref(), Some("4"));
        assert_eq!(canonical_value(0.1 + 0.2, Format::DecimalSi).as_deref(), Some("300m"));
        assert_eq!(canonical_value(2.0 * 1024f64.powi(3), Format::BinarySi).as_deref(), Some("2Gi"));
        assert_eq!(canonical_value(96.0 * 1024f64.powi(2), Format::BinarySi).as_deref(), Some("96Mi"));
        assert_eq!(format_of("1.5Gi"), Some(Format::BinarySi));
        assert_eq!(format_of("0.5Ki"), Some(Format::BinarySi));
        assert_eq!(format_of("0.5e1"), Some(Format::DecimalExponent));
        assert_eq!(format_of("gi"), None);
    }
}
