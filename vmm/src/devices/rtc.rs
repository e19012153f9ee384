//! A CMOS real-time clock (ports 0x70/0x71) that reads the host's time.
//!
//! Without one, reads of port 0x71 return 0xff: the "update in progress" bit looks set
//! forever, and Linux polls it until a one-second timeout (about 1.2 M emulated
//! instructions on a host that emulates guest ring-0 code). The clock is read-only:
//! writes to time registers are ignored, which is all a guest kernel needs to boot.

use std::time::{SystemTime, UNIX_EPOCH};

/// Index port.
pub const INDEX_PORT: u16 = 0x70;
/// Data port.
pub const DATA_PORT: u16 = 0x71;

/// The RTC's state: the selected register.
#[derive(Debug, Default)]
pub struct Rtc {
    index: u8,
}

fn bcd(v: u64) -> u8 {
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe as i64 + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl Rtc {
    /// Register `reg` at `now` seconds since the epoch (UTC).
    fn register(reg: u8, now: u64) -> u8 {
        let days = (now / 86_400) as i64;
        let secs = now % 86_400;
        let (y, m, d) = civil(days);
        match reg {
            0x00 => bcd(secs % 60),
            0x02 => bcd(secs / 60 % 60),
            0x04 => bcd(secs / 3600),
            0x06 => bcd(((days + 4).rem_euclid(7) + 1) as u64), // 1970-01-01 was a Thursday
            0x07 => bcd(d),
            0x08 => bcd(m),
            0x09 => bcd((y.rem_euclid(100)) as u64),
            0x32 => bcd((y / 100) as u64),
            0x0a => 0x26, // 32.768 kHz base, 1024 Hz rate, update-in-progress clear
            0x0b => 0x02, // 24-hour mode, BCD, no interrupts
            0x0c => 0x00,
            0x0d => 0x80, // valid RAM and time
            _ => 0x00,
        }
    }

    /// A write to port 0x70 or 0x71.
    pub fn write(&mut self, port: u16, v: u8) {
        if port == INDEX_PORT {
            self.index = v & 0x7f; // bit 7 is the NMI mask
        }
    }

    /// The selected register (a snapshot's device state).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// A read of port 0x70 or 0x71.
    pub fn read(&self, port: u16) -> u8 {
        if port != DATA_PORT {
            return 0xff;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::register(self.index, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_known_date() {
        // 2026-11-25 18:07:09 UTC = 1795630029
        let t = 1_795_630_029;
        assert_eq!(Rtc::register(0x09, t), 0x26);
        assert_eq!(Rtc::register(0x32, t), 0x20);
        assert_eq!(Rtc::register(0x08, t), 0x11);
        assert_eq!(Rtc::register(0x07, t), 0x25);
        assert_eq!(Rtc::register(0x04, t), 0x18);
        assert_eq!(Rtc::register(0x02, t), 0x07);
        assert_eq!(Rtc::register(0x00, t), 0x09);
        assert_eq!(
            Rtc::register(0x06, t),
            0x04,
            "a Wednesday is day 4 (Sunday = 1)"
        );
        assert_eq!(Rtc::register(0x0a, t) & 0x80, 0, "never update-in-progress");
    }

    #[test]
    fn index_port_selects_register() {
        let mut r = Rtc::default();
        r.write(INDEX_PORT, 0x8d);
        assert_eq!(r.read(DATA_PORT), 0x80);
        assert_eq!(r.read(INDEX_PORT), 0xff);
    }
}
