//! Kubernetes resource quantities (`500m`, `2`, `1.5Gi`, `1e3`) as exact integers of
//! thousandths, so requests and allocatable amounts add and compare without rounding drift.

/// An amount of a resource in thousandths of its unit (millicores for cpu, millibytes for
/// memory, thousandths of a device for extended resources).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Milli(pub i128);

impl std::ops::Add for Milli {
    type Output = Milli;
    fn add(self, other: Milli) -> Milli {
        Milli(self.0.saturating_add(other.0))
    }
}

impl std::ops::AddAssign for Milli {
    fn add_assign(&mut self, other: Milli) {
        *self = *self + other;
    }
}

impl std::ops::Sub for Milli {
    type Output = Milli;
    fn sub(self, other: Milli) -> Milli {
        Milli(self.0.saturating_sub(other.0))
    }
}

/// What [`parse`] accepts, for error messages.
pub const ACCEPTED: &str = "a decimal number with an optional suffix (m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei) or exponent, e.g. 500m, 2, 1.5Gi, 1e3";

/// Parse a quantity, rounding fractions of a thousandth up (as the API server rounds up);
/// `None` when `text` is not a quantity.
pub fn parse(text: &str) -> Option<Milli> {
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{whole}{fraction}");
    let mantissa: i128 = digits.parse().ok()?;
    // value = mantissa * 10^-(fraction digits) * multiplier; kept as a ratio until the end.
    let mut numerator = mantissa.checked_mul(1000)?;
    let mut denominator: i128 = 10i128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let binary = |power: u32| 1024i128.pow(power);
    let decimal = |power: u32| 10i128.pow(power);
    match suffix {
        "" => {}
        "n" => denominator = denominator.checked_mul(decimal(9))?,
        "u" => denominator = denominator.checked_mul(decimal(6))?,
        "m" => denominator = denominator.checked_mul(decimal(3))?,
        "k" => numerator = numerator.checked_mul(decimal(3))?,
        "M" => numerator = numerator.checked_mul(decimal(6))?,
        "G" => numerator = numerator.checked_mul(decimal(9))?,
        "T" => numerator = numerator.checked_mul(decimal(12))?,
        "P" => numerator = numerator.checked_mul(decimal(15))?,
        "E" => numerator = numerator.checked_mul(decimal(18))?,
        "Ki" => numerator = numerator.checked_mul(binary(1))?,
        "Mi" => numerator = numerator.checked_mul(binary(2))?,
        "Gi" => numerator = numerator.checked_mul(binary(3))?,
        "Ti" => numerator = numerator.checked_mul(binary(4))?,
        "Pi" => numerator = numerator.checked_mul(binary(5))?,
        "Ei" => numerator = numerator.checked_mul(binary(6))?,
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().ok()?;
            if power.unsigned_abs() > 30 {
                return None;
            }
            if power >= 0 {
                numerator = numerator.checked_mul(decimal(power.unsigned_abs()))?;
            } else {
                denominator = denominator.checked_mul(decimal(power.unsigned_abs()))?;
            }
        }
        _ => return None,
    }
    let value = (numerator + denominator - 1) / denominator;
    Some(Milli(if negative { -value } else { value }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_suffixes_kubernetes_writes() {
        assert_eq!(parse("500m"), Some(Milli(500)));
        assert_eq!(parse("2"), Some(Milli(2000)));
        assert_eq!(parse("0.5"), Some(Milli(500)));
        assert_eq!(parse("1Ki"), Some(Milli(1_024_000)));
        assert_eq!(parse("32Gi"), Some(Milli(32 * (1i128 << 30) * 1000)));
        assert_eq!(parse("1.5Gi"), Some(Milli(3 * (1i128 << 29) * 1000)));
        assert_eq!(parse("1G"), Some(Milli(1_000_000_000_000)));
        assert_eq!(parse("1e3"), Some(Milli(1_000_000)));
        assert_eq!(parse("1E-3"), Some(Milli(1)));
        assert_eq!(parse("+4"), Some(Milli(4000)));
        assert_eq!(parse("-1"), Some(Milli(-1000)));
    }

    #[test]
    fn rounds_sub_milli_amounts_up() {
        assert_eq!(parse("1n"), Some(Milli(1)));
        assert_eq!(parse("0.0001"), Some(Milli(1)));
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in [
            "",
            "abc",
            "1.2.3",
            "5Q",
            "m",
            ".",
            "1e99",
            "0.0000000000000000000000000000001n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?} should be refused");
        }
    }
}
