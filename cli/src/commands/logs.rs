//! `thaw logs`: what a function printed (stdout and stderr), from the host's bounded
//! per-function buffer; `-f` follows it as it is written.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thaw_spec::api::LogEntry;

use crate::commands::Target;

/// `thaw logs` flags.
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// Name of the function
    pub name: String,
    /// Keep printing lines as they are written
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines written in this last stretch of time: `30s`, `5m`, `2h`, `1d`
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    pub since: Option<Duration>,
    /// Only the last N lines (before following)
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Print what the function wrote as it is; by default control characters (escape
    /// sequences, carriage returns) are shown escaped, so a function cannot drive the
    /// terminal or forge a line
    #[arg(long)]
    pub raw: bool,
    #[allow(missing_docs)] // flattened: its own fields carry the help text
    #[command(flatten)]
    pub target: Target,
}

/// Prints the lines, then, with `--follow`, new ones until interrupted.
pub async fn execute(args: LogsArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    let since_ms = args.since.map_or(0, |age| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(age).as_millis() as u64
    });
    let raw = args.raw;
    let print = move |entry: LogEntry| println!("{}", format_line(&entry, raw));
    let (mut last, dropped) = client
        .logs(&args.name, 0, since_ms, args.tail, false, print)
        .await?;
    if dropped > 0 {
        eprintln!(
            "thaw: {dropped} older lines of {} were dropped by the host's buffer",
            args.name
        );
    }
    if !args.follow {
        return Ok(());
    }
    loop {
        // The host closes a following response after a while; go on from the last line.
        (last, _) = client
            .logs(&args.name, last, since_ms, None, true, print)
            .await?;
    }
}

/// `2026-11-27T14:53:48.123Z v3 #42 stderr | text`; a structured line (an SDK's log call) as
/// `... stderr INFO | charged card order=42 who="a b"`.
pub(crate) fn format_line(entry: &LogEntry, raw: bool) -> String {
    let escape = |text: &str| -> String {
        if raw {
            text.to_owned()
        } else {
            thaw_runtime::guest::log::escape_controls(text).into_owned()
        }
    };
    let head = format!(
        "{} v{} #{} {}",
        rfc3339_ms(entry.time_ms),
        entry.version,
        entry.request,
        entry.stream,
    );
    match (&entry.level, &entry.message) {
        (Some(level), Some(message)) => {
            let mut line = format!("{head} {} | {}", level.to_uppercase(), escape(message));
            for (key, value) in &entry.fields {
                // Quoted (Rust's escaping) when a reader could not tell where it ends.
                let plain = !value.is_empty()
                    && !value.contains(|c: char| c.is_whitespace() || c == '"' || c == '=');
                let value = if plain {
                    escape(value)
                } else {
                    format!("{value:?}")
                };
                line.push_str(&format!(" {}={value}", escape(key)));
            }
            line
        }
        _ => format!("{head} | {}", escape(&entry.text)),
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC timestamp, to the millisecond.
fn rfc3339_ms(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// `30s`, `5m`, `2h`, `1d` (a number and one unit).
fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit: s, m, h or d"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_timestamps() {
        assert_eq!(parse_age("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_age("5").is_err());
        assert!(parse_age("m").is_err());
        assert!(parse_age("5w").is_err());
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_876_428_123), "2026-11-28T14:33:48.123Z");
    }

    #[test]
    fn structured_lines_show_level_and_fields() {
        let mut entry = LogEntry {
            seq: 1,
            time_ms: 0,
            version: 3,
            request: 42,
            stream: "stderr".into(),
            text: "raw\u{1b}[2J".into(),
            level: None,
            message: None,
            fields: Vec::new(),
        };
        assert_eq!(
            format_line(&entry, false),
            "1970-01-01T00:00:00.000Z v3 #42 stderr | raw\\u{1b}[2J"
        );
        entry.level = Some("info".into());
        entry.message = Some("charged card".into());
        entry.fields = vec![
            ("order".into(), "42".into()),
            ("who".into(), "a b".into()),
            ("empty".into(), String::new()),
        ];
        assert_eq!(
            format_line(&entry, false),
            r#"1970-01-01T00:00:00.000Z v3 #42 stderr INFO | charged card order=42 who="a b" empty="""#
        );
    }
}
