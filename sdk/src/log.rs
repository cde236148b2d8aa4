//! Structured logs: `info!("charged card", order = id, ok = true)`.
//!
//! ```no_run
//! use thaw_sdk::log;
//!
//! let order = 42;
//! log::info!("charged card", order = order, amount_eur = 9.5);
//! log::warn!("slow upstream", ms = 812);
//! log::error!(format!("could not reach {}", "api.example.com"));
//! ```
//!
//! A call writes one line to stderr: a JSON object with the level, the message and the
//! fields in the order given, `{"level":"info","msg":"charged card","fields":{"order":42}}`.
//! thaw reads it as a structured line: `thaw logs` prints
//! `... #17 stderr INFO | charged card order=42 amount_eur=9.5`, beside the request that wrote
//! it, and the admin API returns `level`, `message` and `fields`. Under another host the line
//! is readable JSON. Field values are anything `serde::Serialize`.
//!
//! A line is kept under 4,000 bytes (the host keeps 4 KiB of a line): a long message or
//! value is cut, with `…` at the cut, so the line stays whole JSON. Logging from an
//! `#[init]` function is refused at deploy like any host call there.

/// Logs at level `debug`: `debug!(message, key = value, ...)`.
///
/// ```no_run
/// thaw_sdk::log::debug!("cache miss", key = "user:7");
/// ```
#[doc(inline)]
pub use crate::__thaw_log_debug as debug;
/// Logs at level `error`: `error!(message, key = value, ...)`.
///
/// ```no_run
/// thaw_sdk::log::error!("payment failed", order = 42, reason = "card declined");
/// ```
#[doc(inline)]
pub use crate::__thaw_log_error as error;
/// Logs at level `info`: `info!(message, key = value, ...)`.
///
/// ```no_run
/// thaw_sdk::log::info!("charged card", order = 42, ok = true);
/// ```
#[doc(inline)]
pub use crate::__thaw_log_info as info;
/// Logs at level `warn`: `warn!(message, key = value, ...)`.
///
/// ```no_run
/// thaw_sdk::log::warn!("retrying", attempt = 2);
/// ```
#[doc(inline)]
pub use crate::__thaw_log_warn as warn;

/// Longest line written.
const MAX_LINE: usize = 4000;

#[doc(hidden)]
#[macro_export]
macro_rules! __thaw_log {
    ($level:literal, $message:expr $(, $key:ident = $value:expr)* $(,)?) => {
        $crate::log::__write(
            $level,
            ::core::convert::AsRef::<str>::as_ref(&$message),
            &[$((::core::stringify!($key), $crate::log::__value(&$value))),*],
        )
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __thaw_log_debug {
    ($($args:tt)*) => { $crate::__thaw_log!("debug", $($args)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __thaw_log_info {
    ($($args:tt)*) => { $crate::__thaw_log!("info", $($args)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __thaw_log_warn {
    ($($args:tt)*) => { $crate::__thaw_log!("warn", $($args)*) };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __thaw_log_error {
    ($($args:tt)*) => { $crate::__thaw_log!("error", $($args)*) };
}

/// A field's value as JSON (used by the macros).
#[doc(hidden)]
pub fn __value<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or_else(|e| serde_json::Value::String(format!("<{e}>")))
}

/// Writes one structured line to stderr (used by the macros).
#[doc(hidden)]
pub fn __write(level: &str, message: &str, fields: &[(&str, serde_json::Value)]) {
    use std::io::Write as _;
    let mut line = line(level, message, fields);
    line.push('\n');
    // One write: the host reads a line at its newline, so nothing else interleaves.
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// The line: whole if it fits in [`MAX_LINE`] bytes, else with its strings cut, else the
/// message alone, cut.
fn line(level: &str, message: &str, fields: &[(&str, serde_json::Value)]) -> String {
    let mut line = encode(level, message, fields, usize::MAX);
    if line.len() > MAX_LINE {
        line = encode(level, message, fields, 256);
    }
    if line.len() > MAX_LINE {
        // 512 characters are at most 3,072 bytes even escaped (`\u001b` is six).
        line = encode(level, message, &[], 512);
    }
    line
}

/// The line, with every string (the message, string values) cut to `cut` characters.
fn encode(level: &str, message: &str, fields: &[(&str, serde_json::Value)], cut: usize) -> String {
    let string = |s: &str| {
        let s = if s.chars().count() > cut {
            let mut short: String = s.chars().take(cut).collect();
            short.push('…');
            std::borrow::Cow::Owned(short)
        } else {
            std::borrow::Cow::Borrowed(s)
        };
        serde_json::to_string(&*s).unwrap_or_default()
    };
    let mut line = format!("{{\"level\":{},\"msg\":{}", string(level), string(message));
    if !fields.is_empty() {
        line.push_str(",\"fields\":{");
        for (i, (key, value)) in fields.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&string(key));
            line.push(':');
            match value {
                serde_json::Value::String(s) => line.push_str(&string(s)),
                other if cut == usize::MAX => line.push_str(&other.to_string()),
                other => line.push_str(&string(&other.to_string())),
            }
        }
        line.push('}');
    }
    line.push('}');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_in_the_order_written() {
        let line = encode(
            "info",
            "charged \"card\"\n",
            &[("order", __value(&42)), ("who", __value("ada"))],
            usize::MAX,
        );
        assert_eq!(
            line,
            r#"{"level":"info","msg":"charged \"card\"\n","fields":{"order":42,"who":"ada"}}"#
        );
        let plain = encode("warn", "x", &[], usize::MAX);
        assert_eq!(plain, r#"{"level":"warn","msg":"x"}"#);
    }

    #[test]
    fn long_lines_are_cut_and_stay_json() {
        // Four-byte characters and escaped controls: the cut must hold in bytes.
        for long in ["😀".repeat(3000), "\u{1b}".repeat(3000)] {
            let fields = [("v", __value(&long)), ("w", __value(&long))];
            let line = line("info", &long, &fields);
            assert!(line.len() <= MAX_LINE, "{}", line.len());
            serde_json::from_str::<serde_json::Value>(&line).unwrap();
        }
        let long = "é".repeat(5000);
        let line = encode("info", &long, &[("v", __value(&long))], 256);
        assert!(line.len() < MAX_LINE);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["msg"].as_str().unwrap().ends_with('…'));
    }
}
