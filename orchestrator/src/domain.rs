//! Orders as the API accepts them. Input becomes an [`Amount`] or a
//! [`Description`] through one `parse` that says what is wrong; past that
//! point the values cannot be invalid.

use std::fmt;

/// Largest amount accepted: what a NUMERIC(12,2) column holds.
pub const MAX_CENTS: i64 = 999_999_999_999;
pub const MAX_DESCRIPTION_CHARS: usize = 500;

/// A positive amount of money with at most two decimals, held in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(i64);

impl Amount {
    /// Parses the JSON number as written (`207`, `207.5`, `207.00`).
    pub fn parse(number: &str) -> Result<Amount, String> {
        let text = number.trim();
        if text.starts_with('"') {
            return Err("must be a number, not a string".into());
        }
        if text.parse::<f64>().is_err() {
            return Err("must be a number".into());
        }
        let plain;
        let text = if text.contains(['e', 'E']) {
            plain = without_exponent(text).ok_or_else(|| "must be a number".to_string())?;
            plain.as_str()
        } else {
            text
        };
        if text.starts_with('-') {
            return Err("must be greater than zero".into());
        }
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be a number".into());
        }
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > 2 {
            return Err("must have at most two decimals".into());
        }
        let too_big = || format!("must be at most {}", Amount(MAX_CENTS));
        let whole: i64 = match whole.trim_start_matches('0') {
            "" => 0,
            digits => digits.parse().map_err(|_| too_big())?,
        };
        let cents_part: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
        let cents = whole.checked_mul(100).and_then(|c| c.checked_add(cents_part)).ok_or_else(too_big)?;
        if cents <= 0 {
            return Err("must be greater than zero".into());
        }
        if cents > MAX_CENTS {
            return Err(too_big());
        }
        Ok(Amount(cents))
    }

    pub fn from_cents(cents: i64) -> Amount {
        Amount(cents)
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Amount {
    /// Two decimals, as the API has always shown amounts: `207.00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// `1.5e2` as `150`, exactly: the decimal point moved in the digits, not
/// through an `f64`. `None` for an exponent no amount could need.
fn without_exponent(text: &str) -> Option<String> {
    let (mantissa, exponent) = text.split_once(['e', 'E'])?;
    let exponent: i32 = exponent.strip_prefix('+').unwrap_or(exponent).parse().ok().filter(|e: &i32| e.abs() <= 40)?;
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let point = i32::try_from(whole.len()).ok()? + exponent;
    let plain = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    Some(format!("{sign}{plain}"))
}

/// What the order is for: non-empty, at most 500 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub fn parse(text: &str) -> Result<Description, String> {
        if text.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if text.chars().count() > MAX_DESCRIPTION_CHARS {
            return Err(format!("must be at most {MAX_DESCRIPTION_CHARS} characters"));
        }
        if text.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err("must not contain control characters".into());
        }
        Ok(Description(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid order request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub amount: Amount,
    pub description: Description,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        for (text, cents) in [
            ("207.00", 20700),
            ("207", 20700),
            ("0.01", 1),
            ("207.5", 20750),
            ("1.10", 110),
            ("007.00", 700),
            ("9999999999.99", MAX_CENTS),
            ("1e3", 100000),
            ("2.07E+2", 20700),
            ("1.5e-1", 15),
            ("1e-2", 1),
        ] {
            assert_eq!(Amount::parse(text).map(Amount::cents), Ok(cents), "{text}");
        }
        for (text, why) in [
            ("0", "greater than zero"),
            ("0.00", "greater than zero"),
            ("-1", "greater than zero"),
            ("1.001", "two decimals"),
            ("10000000000.00", "at most 9999999999.99"),
            ("99999999999999999999999", "at most"),
            ("1.0000000000000001", "two decimals"),
            ("1.0001e1", "two decimals"),
            ("1e40", "at most"),
            ("1e999", "a number"),
            ("\"207\"", "not a string"),
            ("true", "a number"),
            ("null", "a number"),
            (".5", "a number"),
        ] {
            let err = Amount::parse(text).err().unwrap_or_default();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert_eq!(Amount::from_cents(20700).to_string(), "207.00");
        assert_eq!(Amount::from_cents(5).to_string(), "0.05");
    }

    #[test]
    fn descriptions() {
        assert!(Description::parse("test top up e wallet").is_ok());
        assert!(Description::parse("").is_err());
        assert!(Description::parse("   ").is_err());
        assert!(Description::parse(&"é".repeat(500)).is_ok());
        assert!(Description::parse(&"é".repeat(501)).is_err());
        assert!(Description::parse("a\u{0}b").is_err());
    }
}
