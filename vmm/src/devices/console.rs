//! The guest console: echoes serial output to the VMM's stdout (or keeps it quiet), keeps
//! the log, and watches complete lines for what Linux says when it powers off, panics or
//! starts init, so the VMM can end the run with the guest's real outcome instead of
//! waiting for a reset that a halted kernel never sends.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Something the console saw.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsoleEvent {
    /// A line that matched a milestone (e.g. "Run /init as init process"), with the time
    /// since the VM started, in ms.
    Milestone {
        /// The pattern that matched.
        what: &'static str,
        /// The line from the pattern on (without the kernel's timestamp), e.g.
        /// "smpboot: Total of 2 processors activated (10384.54 BogoMIPS)".
        line: String,
        /// When.
        at_ms: f64,
    },
    /// Linux said "reboot: Power down" (or "System halted"): the guest is done.
    PowerOff,
    /// Linux panicked; the line.
    Panic(String),
    /// A user-mode fault reported at a kernel-half instruction address: on hosts whose KVM
    /// does not deliver `syscall` from guest user mode, the first system call of /init
    /// lands on the kernel's entry point still in user mode and faults there.
    UserFaultAtKernelIp(String),
}

/// Where events go.
pub type EventSink = Box<dyn Fn(ConsoleEvent) + Send + Sync>;

/// Lines that mark boot progress.
pub const MILESTONES: &[&str] = &[
    "Linux version",
    "smpboot: Total of",
    "Freeing unused kernel",
    "Run /init as init process",
    "SEGVMM_INIT_OK",
];

struct State {
    line: Vec<u8>,
    log: Vec<u8>,
    events: Option<EventSink>,
}

/// The console.
pub struct Console {
    echo: bool,
    start: Instant,
    state: Mutex<State>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("echo", &self.echo).finish()
    }
}

/// Most of the log kept in memory.
const LOG_LIMIT: usize = 4 << 20;

impl Console {
    /// A console that echoes to stdout when `echo`.
    pub fn new(echo: bool, start: Instant) -> Self {
        Console {
            echo,
            start,
            state: Mutex::new(State {
                line: Vec::new(),
                log: Vec::new(),
                events: None,
            }),
        }
    }

    /// Where to send events.
    pub fn set_events(&self, sink: EventSink) {
        if let Ok(mut s) = self.state.lock() {
            s.events = Some(sink);
        }
    }

    /// Bytes from the guest.
    pub fn output(&self, buf: &[u8]) {
        if self.echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(buf);
            let _ = out.flush();
        }
        let Ok(mut s) = self.state.lock() else { return };
        if s.log.len() + buf.len() <= LOG_LIMIT {
            s.log.extend_from_slice(buf);
        }
        for &b in buf {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&s.line).trim_end().to_string();
                s.line.clear();
                if let Some(ev) = self.classify(&line) {
                    if let Some(sink) = &s.events {
                        sink(ev);
                    }
                }
            } else if s.line.len() < 4096 {
                s.line.push(b);
            }
        }
    }

    fn classify(&self, line: &str) -> Option<ConsoleEvent> {
        if line.contains("reboot: Power down") || line.contains("System halted") {
            return Some(ConsoleEvent::PowerOff);
        }
        if line.contains("Kernel panic - not syncing") {
            return Some(ConsoleEvent::Panic(line.trim().to_string()));
        }
        if let Some(ip) = line
            .split(" ip ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            if line.contains("segfault at") && ip.len() >= 16 && ip.starts_with("ffff") {
                return Some(ConsoleEvent::UserFaultAtKernelIp(line.trim().to_string()));
            }
        }
        MILESTONES
            .iter()
            .find_map(|m| line.find(*m).map(|i| (m, &line[i..])))
            .map(|(m, rest)| ConsoleEvent::Milestone {
                what: m,
                line: rest.trim_end().to_string(),
                at_ms: self.start.elapsed().as_secs_f64() * 1e3,
            })
    }

    /// The whole log so far, as text.
    pub fn log(&self) -> String {
        self.state
            .lock()
            .map(|s| String::from_utf8_lossy(&s.log).into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_lines_across_writes() {
        let c = Console::new(false, Instant::now());
        let (tx, rx) = std::sync::mpsc::channel();
        c.set_events(Box::new(move |e| tx.send(e).unwrap()));
        c.output(b"[ 1.0] Run /in");
        c.output(b"it as init process\n[ 2.0] reboot: Pow");
        c.output(b"er down\r\n");
        let evs: Vec<_> = rx.try_iter().collect();
        assert!(matches!(
            evs[0],
            ConsoleEvent::Milestone {
                what: "Run /init as init process",
                ..
            }
        ));
        if let ConsoleEvent::Milestone { line, .. } = &evs[0] {
            assert_eq!(line, "Run /init as init process");
        }
        assert_eq!(evs[1], ConsoleEvent::PowerOff);
        assert!(c.log().contains("Power down"));
    }

    #[test]
    fn panics_are_reported() {
        let c = Console::new(false, Instant::now());
        let (tx, rx) = std::sync::mpsc::channel();
        c.set_events(Box::new(move |e| tx.send(e).unwrap()));
        c.output(
            b"init[1]: segfault at ffffffff81a00080 ip ffffffff81a00080 sp 00007ffd4a0 error 15\n",
        );
        assert!(matches!(
            rx.try_recv().unwrap(),
            ConsoleEvent::UserFaultAtKernelIp(_)
        ));
        c.output(b"Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n");
        assert!(
            matches!(rx.try_recv().unwrap(), ConsoleEvent::Panic(l) if l.contains("kill init"))
        );
    }
}
