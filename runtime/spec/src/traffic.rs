//! A function's traffic split: which of its versions serve, and what share of requests each
//! takes. Parsed from `thaw traffic NAME v4=80 v5=20` and from the admin API's JSON.
//!
//! Shares are whole percents that add up to 100. A version may be listed at 0: it takes no
//! share, but a request may still pin it (`x-thaw-version`), which is how a new version is
//! tried before it gets real traffic. A version *not* listed is not reachable at all, pinned
//! or not: rolling back from a bad version must take it off the network, not leave it one
//! header away from any client.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most versions one split may list.
pub const MAX_SPLIT_VERSIONS: usize = 16;

/// One version's share of the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The version number (`4` for `v4`).
    pub version: u64,
    /// Percent of requests, 0 to 100.
    pub percent: u8,
}

/// Versions and their shares, sorted by version; the percents add up to 100.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Share>", into = "Vec<Share>")]
pub struct TrafficSplit(Vec<Share>);

/// Why a split was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SplitError(String);

impl TrafficSplit {
    /// All traffic to one version.
    pub fn single(version: u64) -> Self {
        Self(vec![Share {
            version,
            percent: 100,
        }])
    }

    /// A split from shares, checked: at least one version, none twice, at most
    /// [`MAX_SPLIT_VERSIONS`], percents adding up to 100.
    pub fn new(mut shares: Vec<Share>) -> Result<Self, SplitError> {
        if shares.is_empty() {
            return Err(SplitError(
                "a traffic split needs at least one version".into(),
            ));
        }
        if shares.len() > MAX_SPLIT_VERSIONS {
            return Err(SplitError(format!(
                "a traffic split lists at most {MAX_SPLIT_VERSIONS} versions, not {}",
                shares.len()
            )));
        }
        shares.sort_by_key(|s| s.version);
        if let Some(pair) = shares.windows(2).find(|w| w[0].version == w[1].version) {
            return Err(SplitError(format!("v{} is listed twice", pair[0].version)));
        }
        let total: u32 = shares.iter().map(|s| u32::from(s.percent)).sum();
        if total != 100 {
            return Err(SplitError(format!(
                "the shares add up to {total}%, not 100% ({})",
                Self(shares)
            )));
        }
        Ok(Self(shares))
    }

    /// Parses `v4=80 v5=20` (each argument one `VERSION=PERCENT`; the `v` is optional).
    pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Self, SplitError> {
        let shares = args
            .iter()
            .map(|arg| {
                let arg = arg.as_ref();
                let (version, percent) = arg.split_once('=').ok_or_else(|| {
                    SplitError(format!("{arg:?} is not VERSION=PERCENT (as in v4=80)"))
                })?;
                let version = parse_version(version).map_err(SplitError)?;
                let percent = percent
                    .trim_end_matches('%')
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| {
                        SplitError(format!("{percent:?} in {arg:?} is not a percent (0-100)"))
                    })?;
                Ok(Share { version, percent })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(shares)
    }

    /// The shares, by version.
    pub fn shares(&self) -> &[Share] {
        &self.0
    }

    /// The share of `version` (`None` if it is not listed; `Some(0)` if pinnable only).
    pub fn percent(&self, version: u64) -> Option<u8> {
        self.0
            .iter()
            .find(|s| s.version == version)
            .map(|s| s.percent)
    }

    /// The version with the largest share (the newest of equals): the one whose route and
    /// settings speak for the function.
    pub fn primary(&self) -> u64 {
        self.0
            .iter()
            .max_by_key(|s| (s.percent, s.version))
            .map_or(0, |s| s.version)
    }

    /// The newest version that takes a share.
    pub fn newest_serving(&self) -> u64 {
        self.0
            .iter()
            .filter(|s| s.percent > 0)
            .map(|s| s.version)
            .max()
            .unwrap_or(0)
    }

    /// This split with `version` added at `percent`, the versions already serving sharing
    /// the rest in their proportions (largest remainders get the rounding). Pinnable-only
    /// entries (0%) are kept.
    ///
    /// A version that was reachable only by pinning it (0%) is dropped from the new split,
    /// unless `keep_pinned`: a canary deploy replaces the last experiment, and a pinned-only
    /// version that silently survives every later deploy is one nobody remembers to remove.
    pub fn with_canary(
        &self,
        version: u64,
        percent: u8,
        keep_pinned: bool,
    ) -> Result<Self, SplitError> {
        if percent > 100 {
            return Err(SplitError(format!(
                "a canary share is a percent (0-100), not {percent}"
            )));
        }
        let rest = 100 - u32::from(percent);
        let total: u32 = self.0.iter().map(|s| u32::from(s.percent)).sum();
        let mut shares: Vec<(Share, u32)> = self
            .0
            .iter()
            .filter(|s| s.version != version)
            .map(|s| {
                let exact = u32::from(s.percent) * rest;
                let share = Share {
                    version: s.version,
                    percent: (exact / total.max(1)) as u8,
                };
                (share, exact % total.max(1))
            })
            .collect();
        let given: u32 = shares.iter().map(|(s, _)| u32::from(s.percent)).sum();
        let mut left = rest - given;
        shares.sort_by_key(|(s, remainder)| (std::cmp::Reverse(*remainder), s.version));
        // The points lost to rounding go to the largest remainders; there are at least as
        // many positive remainders as points, so a pinnable-only (0%) entry never gets one.
        for (share, _) in shares.iter_mut() {
            if left == 0 {
                break;
            }
            share.percent += 1;
            left -= 1;
        }
        // A version that served and rounds down to nothing leaves the split (it is not made
        // pinnable-only by arithmetic); one that was pinnable-only stays so only if asked.
        let mut shares: Vec<Share> = shares
            .into_iter()
            .map(|(s, _)| s)
            .filter(|s| s.percent > 0 || (keep_pinned && self.percent(s.version) == Some(0)))
            .collect();
        shares.push(Share { version, percent });
        Self::new(shares)
    }
}

impl TryFrom<Vec<Share>> for TrafficSplit {
    type Error = SplitError;

    fn try_from(shares: Vec<Share>) -> Result<Self, Self::Error> {
        Self::new(shares)
    }
}

impl From<TrafficSplit> for Vec<Share> {
    fn from(split: TrafficSplit) -> Self {
        split.0
    }
}

impl fmt::Display for TrafficSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, share) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "v{}={}", share.version, share.percent)?;
        }
        Ok(())
    }
}

/// Parses `v4` or `4` into 4.
pub fn parse_version(text: &str) -> Result<u64, String> {
    let digits = text.strip_prefix('v').unwrap_or(text);
    digits
        .parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{text:?} is not a version (as in v4)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let split = TrafficSplit::parse_args(&["v5=20", "4=80"]).unwrap();
        assert_eq!(split.to_string(), "v4=80 v5=20");
        assert_eq!(split.primary(), 4);
        assert_eq!(split.newest_serving(), 5);
        for (args, needle) in [
            (&["v4=80", "v5=30"][..], "110%"),
            (&["v4=80", "v4=20"], "twice"),
            (&["v4"], "VERSION=PERCENT"),
            (&["v4=101"], "percent"),
            (&["x=100"], "not a version"),
            (&["v0=100"], "not a version"),
            (&[], "at least one"),
        ] {
            let e = TrafficSplit::parse_args(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }

    #[test]
    fn pinnable_only_versions_take_no_share() {
        let split = TrafficSplit::parse_args(&["v4=100", "v5=0"]).unwrap();
        assert_eq!(split.percent(5), Some(0));
        assert_eq!(split.percent(6), None);
        assert_eq!(split.newest_serving(), 4);
        assert_eq!(split.primary(), 4);
    }

    #[test]
    fn a_canary_scales_the_others() {
        let one = TrafficSplit::single(4);
        assert_eq!(
            one.with_canary(5, 20, false).unwrap().to_string(),
            "v4=80 v5=20"
        );
        let two = TrafficSplit::parse_args(&["v4=80", "v5=20"]).unwrap();
        // 80 * 0.9 = 72, 20 * 0.9 = 18.
        assert_eq!(
            two.with_canary(6, 10, false).unwrap().to_string(),
            "v4=72 v5=18 v6=10"
        );
        // 50/50 * 0.67 = 33.5 each: one remainder point, to the older version on a tie.
        let even = TrafficSplit::parse_args(&["v1=50", "v2=50"]).unwrap();
        assert_eq!(
            even.with_canary(3, 33, false).unwrap().to_string(),
            "v1=34 v2=33 v3=33"
        );
        assert_eq!(
            one.with_canary(5, 0, false).unwrap().to_string(),
            "v4=100 v5=0"
        );
        // A version whose share rounds away leaves the split.
        assert_eq!(
            one.with_canary(5, 100, false).unwrap().to_string(),
            "v5=100"
        );
        let small = TrafficSplit::parse_args(&["v1=99", "v2=1"]).unwrap();
        assert_eq!(
            small.with_canary(3, 50, false).unwrap().to_string(),
            "v1=50 v3=50"
        );
        let pinnable = TrafficSplit::parse_args(&["v1=100", "v2=0"]).unwrap();
        assert_eq!(
            pinnable.with_canary(3, 20, true).unwrap().to_string(),
            "v1=80 v2=0 v3=20"
        );
        // Unless asked, the next canary drops a version that was only pinnable.
        assert_eq!(
            pinnable.with_canary(3, 20, false).unwrap().to_string(),
            "v1=80 v3=20"
        );
    }

    #[test]
    fn json_is_checked_too() {
        let ok: TrafficSplit = serde_json::from_str(r#"[{"version":2,"percent":100}]"#).unwrap();
        assert_eq!(ok, TrafficSplit::single(2));
        let bad = serde_json::from_str::<TrafficSplit>(r#"[{"version":2,"percent":90}]"#);
        assert!(bad.unwrap_err().to_string().contains("90%"));
    }
}
