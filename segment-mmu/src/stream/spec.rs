//! Stream spec syntax: `KIND:key=value,...`.
//!
//! * `gups:footprint=4G,count=10M[,seed=S][,zipf=S]` (with `zipf=`: Zipf(S) page
//!   popularity, see [`super::gen::ZipfGups`])
//! * `hotset:footprint=4G,count=10M[,hot=0.1][,frac=0.9][,shift=N]`
//! * `phases:footprint=4G,count=10M[,phase=2M][,churn=16M][,rate=0.01]`
//! * `chase:footprint=64M,count=1M[,seed=S]`
//! * `seq:footprint=1G,count=10M[,step=8]`
//! * `stride:footprint=1G,count=10M,stride=4096`
//! * `zipf:footprint=4G,count=10M,theta=0.99[,seed=S]`
//! * `ptchurn:footprint=1G,count=10M[,rate=0.001][,seed=S]`
//!
//! Every kind accepts `base=0x...` (default: the start of the address space's largest
//! mapped region, i.e. the heap) and `seed` (default 1).

use std::str::FromStr;

use super::gen::{Chase, Gups, HotSet, Phases, PtChurn, Strided, Zipf, ZipfGups};
use super::{AddressStream, Error, IterStream};
use crate::units::{pairs, parse_count, parse_f64, parse_size};

/// The generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamKind {
    /// Sequential reads `step` bytes apart.
    Seq {
        /// Bytes between accesses.
        step: u64,
    },
    /// Strided reads.
    Stride {
        /// Bytes between accesses.
        stride: u64,
    },
    /// GUPS.
    Gups,
    /// Pointer chase.
    Chase,
    /// Zipf with skew θ.
    Zipf {
        /// Skew.
        theta: f64,
    },
    /// Page-table churn at `rate` per access.
    PtChurn {
        /// Probability of an unmap/map pair before an access.
        rate: f64,
    },
    /// GUPS with Zipf(s) page popularity.
    ZipfGups {
        /// Skew.
        s: f64,
    },
    /// Hot-set updates.
    HotSet {
        /// Fraction of pages that are hot.
        hot: f64,
        /// Fraction of accesses to the hot set.
        frac: f64,
        /// Accesses between hot-set moves (0: never).
        shift: u64,
    },
    /// Alternating churn and GUPS phases.
    Phases {
        /// Accesses per phase.
        phase: u64,
        /// Bytes the churn phases touch.
        churn: u64,
        /// Remap probability per access in churn phases.
        rate: f64,
    },
}

/// A parsed stream spec.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSpec {
    /// Generator.
    pub kind: StreamKind,
    /// Bytes covered.
    pub footprint: u64,
    /// Accesses.
    pub count: u64,
    /// Seed.
    pub seed: u64,
    /// Virtual base, if given.
    pub base: Option<u64>,
}

/// Largest pointer-chase permutation built in memory (8 bytes per 64-byte element).
pub const MAX_CHASE_FOOTPRINT: u64 = 16 << 30;

impl FromStr for StreamSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let mut footprint = None;
        let mut count = None;
        let (mut seed, mut base) = (1u64, None);
        let (mut step, mut stride, mut theta, mut rate) = (8u64, 4096u64, 0.99f64, 0.001f64);
        let (mut zipf, mut hot, mut frac, mut shift) = (None, 0.1f64, 0.9f64, 0u64);
        let (mut phase, mut churn) = (2_000_000u64, 16u64 << 20);
        if kind == "phases" {
            rate = 0.01;
        }
        let bad = |k: &str, v: &str| Error::Spec(format!("bad value {v:?} for {k}"));
        for (k, v) in pairs(rest) {
            match k {
                "footprint" => footprint = Some(parse_size(v).map_err(|_| bad(k, v))?),
                "count" => count = Some(parse_count(v).map_err(|_| bad(k, v))?),
                "seed" => seed = parse_count(v).map_err(|_| bad(k, v))?,
                "base" => base = Some(parse_size(v).map_err(|_| bad(k, v))?),
                "step" if kind == "seq" => step = parse_size(v).map_err(|_| bad(k, v))?,
                "stride" if kind == "stride" => stride = parse_size(v).map_err(|_| bad(k, v))?,
                "theta" if kind == "zipf" => theta = parse_f64(v).map_err(|_| bad(k, v))?,
                "rate" if kind == "ptchurn" || kind == "phases" => {
                    rate = parse_f64(v).map_err(|_| bad(k, v))?
                }
                "zipf" if kind == "gups" => zipf = Some(parse_f64(v).map_err(|_| bad(k, v))?),
                "hot" if kind == "hotset" => hot = parse_f64(v).map_err(|_| bad(k, v))?,
                "frac" if kind == "hotset" => frac = parse_f64(v).map_err(|_| bad(k, v))?,
                "shift" if kind == "hotset" => shift = parse_count(v).map_err(|_| bad(k, v))?,
                "phase" if kind == "phases" => phase = parse_count(v).map_err(|_| bad(k, v))?,
                "churn" if kind == "phases" => churn = parse_size(v).map_err(|_| bad(k, v))?,
                _ => {
                    return Err(Error::Spec(format!(
                        "unknown key {k:?} for stream {kind:?}"
                    )))
                }
            }
        }
        let kind = match kind {
            "seq" => StreamKind::Seq { step },
            "stride" => StreamKind::Stride { stride },
            "gups" => match zipf {
                Some(s) => StreamKind::ZipfGups { s },
                None => StreamKind::Gups,
            },
            "hotset" => StreamKind::HotSet { hot, frac, shift },
            "phases" => StreamKind::Phases { phase, churn, rate },
            "chase" => StreamKind::Chase,
            "zipf" => StreamKind::Zipf { theta },
            "ptchurn" => StreamKind::PtChurn { rate },
            other => {
                return Err(Error::Spec(format!(
                    "unknown stream kind {other:?} (known: gups, chase, seq, stride, zipf, ptchurn, hotset, phases)"
                )))
            }
        };
        let footprint = footprint.ok_or_else(|| Error::Spec("missing footprint=".into()))?;
        let count = count.ok_or_else(|| Error::Spec("missing count=".into()))?;
        let spec = StreamSpec {
            kind,
            footprint,
            count,
            seed,
            base,
        };
        spec.check()?;
        Ok(spec)
    }
}

impl StreamSpec {
    fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Spec(m));
        if self.footprint < 4096 {
            return bad(format!("footprint {} is below one page", self.footprint));
        }
        match self.kind {
            StreamKind::Seq { step: 0 } | StreamKind::Stride { stride: 0 } => {
                return bad("step/stride must be > 0".into())
            }
            StreamKind::Zipf { theta }
                if theta <= 0.0 || (theta - 1.0).abs() < 1e-9 || theta > 10.0 =>
            {
                return bad(format!("theta {theta} must be in (0, 10] and not 1"))
            }
            StreamKind::PtChurn { rate } | StreamKind::Phases { rate, .. }
                if !(0.0..=1.0).contains(&rate) =>
            {
                return bad(format!("rate {rate} not in [0, 1]"))
            }
            StreamKind::ZipfGups { s } if s <= 0.0 || (s - 1.0).abs() < 1e-9 || s > 10.0 => {
                return bad(format!("zipf {s} must be in (0, 10] and not 1"))
            }
            StreamKind::HotSet { hot, frac, .. }
                if !(hot > 0.0 && hot <= 1.0 && (0.0..=1.0).contains(&frac)) =>
            {
                return bad(format!(
                    "hot {hot} must be in (0, 1] and frac {frac} in [0, 1]"
                ))
            }
            StreamKind::Phases { phase: 0, .. } => return bad("phase must be > 0".into()),
            StreamKind::Chase if self.footprint > MAX_CHASE_FOOTPRINT => {
                return bad(format!(
                    "chase footprint above {} GiB would need too large a permutation",
                    MAX_CHASE_FOOTPRINT >> 30
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Builds the generator at `base` (the spec's own `base=` wins).
    pub fn build(&self, default_base: u64) -> Box<dyn AddressStream> {
        let base = self.base.unwrap_or(default_base);
        let (fp, n, seed) = (self.footprint, self.count, self.seed);
        // Page-table events are extra events, not accesses: ptchurn's length is unknown.
        match self.kind {
            StreamKind::Seq { step } => {
                Box::new(IterStream::new(Strided::new(base, fp, step, n), Some(n)))
            }
            StreamKind::Stride { stride } => {
                Box::new(IterStream::new(Strided::new(base, fp, stride, n), Some(n)))
            }
            StreamKind::Gups => Box::new(IterStream::new(Gups::new(base, fp, n, seed), Some(n))),
            StreamKind::Chase => Box::new(IterStream::new(Chase::new(base, fp, n, seed), Some(n))),
            StreamKind::Zipf { theta } => Box::new(IterStream::new(
                Zipf::new(base, fp, n, theta, seed),
                Some(n),
            )),
            StreamKind::PtChurn { rate } => Box::new(IterStream::new(
                PtChurn::new(base, fp, n, rate, seed),
                Some(n),
            )),
            StreamKind::ZipfGups { s } => Box::new(IterStream::new(
                ZipfGups::new(base, fp, n, s, seed),
                Some(n),
            )),
            StreamKind::HotSet { hot, frac, shift } => Box::new(IterStream::new(
                HotSet::new(base, fp, n, hot, frac, shift, seed),
                Some(n),
            )),
            StreamKind::Phases { phase, churn, rate } => Box::new(IterStream::new(
                Phases::new(base, fp, n, phase, churn, rate, seed),
                Some(n),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let s: StreamSpec = "gups:footprint=4G,count=10M,seed=3".parse().unwrap();
        assert_eq!(
            (s.kind, s.footprint, s.count, s.seed),
            (StreamKind::Gups, 4 << 30, 10_000_000, 3)
        );
        let s: StreamSpec = "stride:footprint=1G,count=5,stride=8k".parse().unwrap();
        assert_eq!(s.kind, StreamKind::Stride { stride: 8192 });
        assert!("gups:count=10".parse::<StreamSpec>().is_err());
        assert!("zipf:footprint=1G,count=1,theta=1"
            .parse::<StreamSpec>()
            .is_err());
        assert!("gups:footprint=1G,count=1,theta=0.5"
            .parse::<StreamSpec>()
            .is_err());
        assert!("walk:footprint=1G,count=1".parse::<StreamSpec>().is_err());
        let z: StreamSpec = "gups:footprint=1G,count=1,zipf=0.9".parse().unwrap();
        assert_eq!(z.kind, StreamKind::ZipfGups { s: 0.9 });
        assert!("gups:footprint=1G,count=1,zipf=1"
            .parse::<StreamSpec>()
            .is_err());
        assert!("hotset:footprint=1G,count=1,hot=0"
            .parse::<StreamSpec>()
            .is_err());
        assert!("phases:footprint=1G,count=1,phase=0"
            .parse::<StreamSpec>()
            .is_err());
        let p: StreamSpec = "phases:footprint=1G,count=1,phase=1M".parse().unwrap();
        assert_eq!(
            p.kind,
            StreamKind::Phases {
                phase: 1_000_000,
                churn: 16 << 20,
                rate: 0.01
            }
        );
        let mut st = "seq:footprint=8k,count=3,base=0x1000"
            .parse::<StreamSpec>()
            .unwrap()
            .build(0);
        assert_eq!(st.next_event().unwrap().map(|e| e.va), Some(0x1000));
        assert_eq!(st.len_hint(), Some(3));
    }
}
