//! Synthetic workloads: Poisson arrivals, a size mix and a lifetime distribution.
//!
//! Spec syntax (every parameter optional, comma-separated `key=value`):
//! `vms=100000,rate=0.5,sizes=2G:60/4G:30/16G:10,lifetime=exp:86400,end=200000`.
//! Lifetimes: `exp:MEAN`, `fixed:S`, `uniform:LO:HI`, `lognormal:MU:SIGMA` (of ln seconds),
//! `pareto:SCALE:SHAPE`. Sizes are memory sizes with relative weights. The simulation ends
//! at `end` seconds, or at the last arrival when `end` is not given.

use std::str::FromStr;

use super::rng::Rng;
use super::size::parse_size;
use super::workload::{VmRequest, Workload};

/// A spec that could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// Unknown key or a value that does not parse.
    #[error("synthetic spec: {0}")]
    Spec(String),
}

/// Lifetime distribution, seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lifetime {
    /// Exponential with this mean.
    Exp(f64),
    /// Always this long.
    Fixed(f64),
    /// Uniform in [lo, hi).
    Uniform(f64, f64),
    /// exp(N(mu, sigma)).
    LogNormal(f64, f64),
    /// Pareto with this scale (minimum) and shape: heavy tails like real VM lifetimes.
    Pareto(f64, f64),
}

impl Lifetime {
    fn sample(&self, r: &mut Rng) -> f64 {
        match *self {
            Lifetime::Exp(m) => r.exp(m),
            Lifetime::Fixed(s) => s,
            Lifetime::Uniform(a, b) => a + (b - a) * r.next_f64(),
            Lifetime::LogNormal(mu, sigma) => {
                // Box–Muller.
                let (u1, u2) = (1.0 - r.next_f64(), r.next_f64());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                (mu + sigma * z).exp()
            }
            Lifetime::Pareto(scale, shape) => scale / (1.0 - r.next_f64()).powf(1.0 / shape),
        }
    }
}

/// A parsed synthetic spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// Number of VMs.
    pub vms: usize,
    /// Mean arrivals per second.
    pub rate: f64,
    /// (bytes, weight) pairs.
    pub sizes: Vec<(u64, f64)>,
    /// Lifetime distribution.
    pub lifetime: Lifetime,
    /// End of the simulation, seconds.
    pub end: Option<u64>,
}

impl Default for Spec {
    /// Shaped like the Azure sample: mostly small VMs living hours.
    fn default() -> Self {
        Self {
            vms: 100_000,
            rate: 1.0,
            sizes: vec![
                (2 << 30, 60.0),
                (4 << 30, 20.0),
                (8 << 30, 10.0),
                (16 << 30, 8.0),
                (64 << 30, 2.0),
            ],
            lifetime: Lifetime::Exp(3600.0 * 6.0),
            end: None,
        }
    }
}

fn num(key: &str, v: &str) -> Result<f64, Error> {
    let x: f64 = v
        .parse()
        .map_err(|_| Error::Spec(format!("{key}: {v:?} is not a number")))?;
    if !(x.is_finite() && x > 0.0) {
        return Err(Error::Spec(format!("{key}: {v:?} must be positive")));
    }
    if key == "lifetime" && x > MAX_SECONDS as f64 {
        return Err(Error::Spec(format!(
            "{key}: {v:?} is more than {MAX_SECONDS} s (the cap MAX_SECONDS)"
        )));
    }
    Ok(x)
}

/// Most VMs a synthetic workload may hold (each is kept in memory, 24 bytes).
pub const MAX_VMS: usize = 1 << 24;
/// Longest lifetime or end time of a synthetic workload, in seconds (about 31,700 years).
pub const MAX_SECONDS: u64 = 1_000_000_000_000;

impl FromStr for Spec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let mut spec = Spec::default();
        for kv in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| Error::Spec(format!("{kv:?} is not key=value")))?;
            match k.trim() {
                "vms" => {
                    spec.vms = v
                        .parse()
                        .map_err(|_| Error::Spec(format!("vms: {v:?} is not a count")))?;
                    if spec.vms > MAX_VMS {
                        return Err(Error::Spec(format!(
                            "vms: {v} is more than {MAX_VMS} (the cap MAX_VMS)"
                        )));
                    }
                }
                "rate" => spec.rate = num("rate", v)?,
                "end" => {
                    let end: u64 = v
                        .parse()
                        .map_err(|_| Error::Spec(format!("end: {v:?} is not seconds")))?;
                    if end > MAX_SECONDS {
                        return Err(Error::Spec(format!(
                            "end: {v} is more than {MAX_SECONDS} s (the cap MAX_SECONDS)"
                        )));
                    }
                    spec.end = Some(end);
                }
                "sizes" => {
                    spec.sizes = v
                        .split('/')
                        .map(|item| {
                            let (sz, w) = item.split_once(':').unwrap_or((item, "1"));
                            let b =
                                parse_size(sz).map_err(|e| Error::Spec(format!("sizes: {e}")))?;
                            if b == 0 {
                                return Err(Error::Spec("sizes: zero size".into()));
                            }
                            Ok((b, num("size weight", w)?))
                        })
                        .collect::<Result<_, _>>()?;
                }
                "lifetime" => {
                    let p: Vec<&str> = v.split(':').collect();
                    spec.lifetime = match p.as_slice() {
                        ["exp", m] => Lifetime::Exp(num("lifetime", m)?),
                        ["fixed", m] => Lifetime::Fixed(num("lifetime", m)?),
                        ["uniform", a, b] if num("lifetime", a)? < num("lifetime", b)? => {
                            Lifetime::Uniform(num("lifetime", a)?, num("lifetime", b)?)
                        }
                        ["lognormal", m, s] => Lifetime::LogNormal(
                            m.parse().map_err(|_| Error::Spec(format!("lifetime: {m:?} is not a number")))?,
                            num("lifetime", s)?,
                        ),
                        ["pareto", a, b] => Lifetime::Pareto(num("lifetime", a)?, num("lifetime", b)?),
                        _ => return Err(Error::Spec(format!("lifetime: {v:?}: expected exp:MEAN, fixed:S, uniform:LO:HI, lognormal:MU:SIGMA or pareto:SCALE:SHAPE"))),
                    }
                }
                other => {
                    return Err(Error::Spec(format!(
                        "unknown key {other:?} (vms, rate, sizes, lifetime, end)"
                    )))
                }
            }
        }
        if spec.vms == 0 {
            return Err(Error::Spec("vms must be at least 1".into()));
        }
        Ok(spec)
    }
}

/// Generates the workload of `spec` from `seed`.
pub fn generate(spec: &Spec, seed: u64) -> Workload {
    let mut r = Rng::new(seed);
    let total: f64 = spec.sizes.iter().map(|s| s.1).sum();
    let mut t = 0.0f64;
    let mut vms = Vec::with_capacity(spec.vms);
    for _ in 0..spec.vms {
        t += r.exp(1.0 / spec.rate);
        let mut pick = r.next_f64() * total;
        let memory = spec
            .sizes
            .iter()
            .find(|(_, w)| {
                pick -= w;
                pick < 0.0
            })
            .or(spec.sizes.last())
            .map_or(1 << 30, |s| s.0);
        let life = spec
            .lifetime
            .sample(&mut r)
            .max(1.0)
            .min(MAX_SECONDS as f64);
        vms.push(VmRequest {
            arrival: t as u64,
            lifetime: Some(life as u64),
            memory,
        });
    }
    let end = spec.end.unwrap_or(t as u64 + 1);
    Workload {
        source: "synthetic".into(),
        vms,
        start: 0,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_every_key() {
        let s: Spec = "vms=10,rate=2,sizes=1G:3/2G,lifetime=uniform:5:10,end=99"
            .parse()
            .unwrap();
        assert_eq!(s.vms, 10);
        assert_eq!(s.rate, 2.0);
        assert_eq!(s.sizes, vec![(1 << 30, 3.0), (2 << 30, 1.0)]);
        assert_eq!(s.lifetime, Lifetime::Uniform(5.0, 10.0));
        assert_eq!(s.end, Some(99));
        assert_eq!("".parse::<Spec>().unwrap(), Spec::default());
    }

    #[test]
    fn spec_rejects_garbage() {
        for bad in [
            "vms=0",
            "rate=-1",
            "sizes=1Q",
            "lifetime=gauss:1",
            "colour=red",
            "vms",
            "lifetime=uniform:9:1",
        ] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn generates_poisson_arrivals_and_mix() {
        let s: Spec = "vms=20000,rate=0.5,sizes=1G:1/3G:1,lifetime=fixed:100"
            .parse()
            .unwrap();
        let w = generate(&s, 9);
        assert_eq!(w, generate(&s, 9));
        assert_eq!(w.vms.len(), 20000);
        assert!(w.vms.windows(2).all(|p| p[0].arrival <= p[1].arrival));
        let span = w.vms.last().unwrap().arrival as f64;
        assert!(
            (span / 20000.0 - 2.0).abs() < 0.1,
            "mean gap {}",
            span / 20000.0
        );
        let big = w.vms.iter().filter(|v| v.memory == 3 << 30).count();
        assert!((9000..11000).contains(&big), "{big}");
        assert!(w.vms.iter().all(|v| v.lifetime == Some(100)));
    }
}
