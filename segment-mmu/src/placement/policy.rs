//! Placement policies: which host, and which free extent inside it.
//!
//! Host and extent choice are separate knobs because they fragment memory differently:
//! host choice decides how full each host gets, extent choice how its free space is cut.

use std::fmt;
use std::str::FromStr;

/// A policy name that is not known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not one of first-fit, best-fit, worst-fit.
    #[error("unknown policy {0:?}: expected first-fit, best-fit or worst-fit")]
    Unknown(String),
}

/// How a host is chosen among those that can take the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostPolicy {
    /// Lowest-numbered host: packs the front of the cluster.
    FirstFit,
    /// Host with the least free memory: classic bin-packing best fit.
    BestFit,
    /// Host with the most free memory: spreads load.
    WorstFit,
}

/// How a free extent is chosen inside the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtentPolicy {
    /// Lowest-addressed extent that is large enough.
    FirstFit,
    /// Smallest extent that is large enough: keeps big extents whole.
    BestFit,
    /// Largest extent: leaves the biggest remainders.
    WorstFit,
}

/// What a placement needs from a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Host-physical segments: one extent, or up to `max_segments` extents.
    Segments,
    /// The paging baseline: any free bytes will do, contiguity is not needed.
    Paging,
}

/// The three names shared by host and extent policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fit {
    /// First fit.
    First,
    /// Best fit.
    Best,
    /// Worst fit.
    Worst,
}

impl Fit {
    /// All three, in the order results are reported.
    pub const ALL: [Fit; 3] = [Fit::First, Fit::Best, Fit::Worst];

    /// The host policy of this name.
    pub fn host(self) -> HostPolicy {
        match self {
            Fit::First => HostPolicy::FirstFit,
            Fit::Best => HostPolicy::BestFit,
            Fit::Worst => HostPolicy::WorstFit,
        }
    }

    /// The extent policy of this name.
    pub fn extent(self) -> ExtentPolicy {
        match self {
            Fit::First => ExtentPolicy::FirstFit,
            Fit::Best => ExtentPolicy::BestFit,
            Fit::Worst => ExtentPolicy::WorstFit,
        }
    }
}

impl FromStr for Fit {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "first-fit" | "first" | "ff" => Ok(Fit::First),
            "best-fit" | "best" | "bf" => Ok(Fit::Best),
            "worst-fit" | "worst" | "wf" => Ok(Fit::Worst),
            _ => Err(Error::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fit::First => "first-fit",
            Fit::Best => "best-fit",
            Fit::Worst => "worst-fit",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Fit::ALL {
            assert_eq!(f.to_string().parse::<Fit>(), Ok(f));
        }
        assert_eq!("BF".parse::<Fit>(), Ok(Fit::Best));
        assert!("next-fit".parse::<Fit>().is_err());
        assert_eq!(Fit::Worst.host(), HostPolicy::WorstFit);
        assert_eq!(Fit::Best.extent(), ExtentPolicy::BestFit);
    }
}
