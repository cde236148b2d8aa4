//! Postgres `numeric` in its binary wire form, to and from base-10 text (Spin's `decimal`).
//!
//! The wire form is a header of four 16-bit fields (the number of digits, the weight of the
//! first digit as a power of 10000, the sign, and the display scale) and then the digits in
//! base 10000 (`numeric_send` and `numeric_recv` in Postgres's `numeric.c`). It is written
//! here rather than taken from a decimal crate: `rust_decimal` holds 28 significant digits
//! and `numeric` up to 131072 before the point, and a guest asked for text, which a
//! conversion through a fixed-size type would round.

/// The sign field's values.
const POSITIVE: u16 = 0x0000;
const NEGATIVE: u16 = 0x4000;
const NAN: u16 = 0xC000;
const INFINITY: u16 = 0xD000;
const NEGATIVE_INFINITY: u16 = 0xF000;

/// The longest text accepted as a parameter: Postgres's own bound on `numeric` digits
/// (131072 before the point, 16383 after) plus a sign and a point.
const MAX_TEXT: usize = 131072 + 16383 + 2;

/// `raw` (a `numeric` as the server sent it) as base-10 text, `dscale` digits after the
/// point, as Postgres's own output function writes it.
pub fn to_text(raw: &[u8]) -> Result<String, String> {
    let field = |i: usize| -> Result<u16, String> {
        raw.get(i * 2..i * 2 + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "a numeric value shorter than its header".to_owned())
    };
    let (ndigits, weight, sign, dscale) = (field(0)?, field(1)? as i16, field(2)?, field(3)?);
    match sign {
        NAN => return Ok("NaN".into()),
        INFINITY => return Ok("Infinity".into()),
        NEGATIVE_INFINITY => return Ok("-Infinity".into()),
        POSITIVE | NEGATIVE => {}
        other => return Err(format!("a numeric value with sign field {other:#06x}")),
    }
    let digits = (0..usize::from(ndigits))
        .map(|i| field(4 + i))
        .collect::<Result<Vec<u16>, String>>()?;
    if digits.iter().any(|&d| d > 9999) {
        return Err("a numeric digit over 9999".into());
    }
    // Base-10000 digit `k` has weight `weight - k`; digits outside `digits` are 0.
    let digit = |w: i32| -> u16 {
        let k = i32::from(weight) - w;
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    if sign == NEGATIVE {
        text.push('-');
    }
    // The integer part: the groups of weight `weight` down to 0, the first unpadded.
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit(i32::from(weight)).to_string());
        for w in (0..i32::from(weight)).rev() {
            text.push_str(&format!("{:04}", digit(w)));
        }
    }
    if dscale > 0 {
        text.push('.');
        let mut fraction = String::new();
        let mut w = -1;
        while fraction.len() < usize::from(dscale) {
            fraction.push_str(&format!("{:04}", digit(w)));
            w -= 1;
        }
        fraction.truncate(usize::from(dscale));
        text.push_str(&fraction);
    }
    Ok(text)
}

/// Base-10 `text` (`-12.50`, `1e3` is not accepted: digits, one optional point, an optional
/// sign; or `NaN`, `Infinity`, `-Infinity`) in the wire form.
pub fn from_text(text: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{:?} is not a decimal number", truncated(text));
    if text.len() > MAX_TEXT {
        return Err(format!("a decimal of more than {MAX_TEXT} characters"));
    }
    let special = |sign: u16| [0u16, 0, sign, 0];
    let header = match text {
        "NaN" => Some(special(NAN)),
        "Infinity" | "+Infinity" => Some(special(INFINITY)),
        "-Infinity" => Some(special(NEGATIVE_INFINITY)),
        _ => None,
    };
    if let Some(header) = header {
        return Ok(header.iter().flat_map(|f| f.to_be_bytes()).collect());
    }
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (integer, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (integer.is_empty() && fraction.is_empty()) || !all_digits(integer) || !all_digits(fraction)
    {
        return Err(bad());
    }
    let integer = integer.trim_start_matches('0');
    let dscale = u16::try_from(fraction.len()).map_err(|_| bad())?;
    // Pad the integer part on the left and the fraction on the right to whole groups of 4.
    let left = (4 - integer.len() % 4) % 4;
    let right = (4 - fraction.len() % 4) % 4;
    let padded: Vec<u8> = std::iter::repeat_n(b'0', left)
        .chain(integer.bytes())
        .chain(fraction.bytes())
        .chain(std::iter::repeat_n(b'0', right))
        .collect();
    let mut groups: Vec<u16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')))
        .collect();
    let mut weight = i32::try_from((left + integer.len()) / 4).map_err(|_| bad())? - 1;
    // Postgres stores no leading or trailing zero groups (and zero as no digits).
    let leading = groups.iter().take_while(|&&g| g == 0).count();
    groups.drain(..leading);
    weight -= i32::try_from(leading).map_err(|_| bad())?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign = if negative && !groups.is_empty() {
        NEGATIVE
    } else {
        POSITIVE
    };
    let ndigits = u16::try_from(groups.len()).map_err(|_| bad())?;
    let weight = i16::try_from(weight).map_err(|_| bad())?;
    Ok([ndigits, weight as u16, sign, dscale]
        .into_iter()
        .chain(groups)
        .flat_map(u16::to_be_bytes)
        .collect())
}

fn truncated(text: &str) -> &str {
    let end = text.char_indices().nth(40).map_or(text.len(), |(i, _)| i);
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_goes_round_the_wire_form_as_postgres_writes_it() {
        for text in [
            "0",
            "1",
            "-1",
            "12.50",
            "0.0001",
            "-0.5",
            "10000",
            "123456789.987654321",
            "99999999999999999999999999999999.000000000001",
            "NaN",
            "Infinity",
            "-Infinity",
            "0.000",
            "1000000",
        ] {
            let wire = from_text(text).unwrap();
            assert_eq!(to_text(&wire).unwrap(), text, "{text}");
        }
        // Postgres's own encodings: 12.50 is one group 12, weight 0, and one group 5000.
        assert_eq!(
            from_text("12.50").unwrap(),
            [0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x13, 0x88]
        );
        assert_eq!(from_text("+007").unwrap(), from_text("7").unwrap());
        assert_eq!(to_text(&from_text("-0").unwrap()).unwrap(), "0");
    }

    #[test]
    fn what_is_not_a_decimal_is_refused() {
        for text in ["", ".", "1e3", "1.2.3", "abc", "--1", " 1", "0x10"] {
            assert!(from_text(text).is_err(), "{text:?}");
        }
        assert!(to_text(&[0, 1]).is_err());
        assert!(
            to_text(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err(),
            "a digit missing"
        );
        assert!(
            to_text(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err(),
            "10000"
        );
    }
}
