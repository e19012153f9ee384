//! Address streams: what the designs are fed.
//!
//! A stream is a sequence of [`Event`]s: accesses (read/write of a virtual address) and
//! page-table events (map/unmap of a page, which the designs must see because shadow
//! paging pays a VM exit for each guest page-table write). Generators ([`gen`]) are
//! built from a one-line spec ([`StreamSpec`]); recorded streams come from the binary
//! trace format ([`trace`]).

pub mod gen;
pub mod hotlog;
pub mod spec;
pub mod trace;

pub use spec::{StreamKind, StreamSpec};

/// What happens at a virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A load.
    Read,
    /// A store (or a read-modify-write: the load's translation serves the store).
    Write,
    /// The guest unmaps the page (a page-table write plus INVLPG).
    Unmap,
    /// The guest maps the page again (a page-table write).
    Map,
}

/// One stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Event {
    /// Virtual address.
    pub va: u64,
    /// What happens there.
    pub kind: EventKind,
}

impl Event {
    /// A read of `va`.
    pub const fn read(va: u64) -> Self {
        Self {
            va,
            kind: EventKind::Read,
        }
    }
    /// A write of `va`.
    pub const fn write(va: u64) -> Self {
        Self {
            va,
            kind: EventKind::Write,
        }
    }
    /// True for reads and writes.
    #[inline]
    pub fn is_access(&self) -> bool {
        matches!(self.kind, EventKind::Read | EventKind::Write)
    }
}

/// Errors of streams (specs, traces).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A bad stream spec.
    #[error("stream spec: {0}")]
    Spec(String),
    /// A bad or truncated trace.
    #[error("trace: {0}")]
    Trace(String),
    /// I/O.
    #[error("trace i/o: {0}")]
    Io(String),
}

/// A source of events. Generators never fail; trace readers may (I/O, corruption),
/// so the seam is fallible.
pub trait AddressStream: Send {
    /// The next event, `Ok(None)` at the end.
    fn next_event(&mut self) -> Result<Option<Event>, Error>;
    /// Total events, when known (for progress reporting).
    fn len_hint(&self) -> Option<u64>;
    /// Appends events to `buf` until it holds `upto` events or the stream ends (the
    /// replay reads in batches: one call per chunk instead of one per event).
    fn fill(&mut self, buf: &mut Vec<Event>, upto: usize) -> Result<(), Error> {
        while buf.len() < upto {
            match self.next_event()? {
                Some(e) => buf.push(e),
                None => break,
            }
        }
        Ok(())
    }
}

/// Any infallible iterator of events is a stream.
#[derive(Debug)]
pub struct IterStream<I> {
    it: I,
    len: Option<u64>,
}

impl<I: Iterator<Item = Event> + Send> IterStream<I> {
    /// Wraps `it`, whose length is `len` if known.
    pub fn new(it: I, len: Option<u64>) -> Self {
        Self { it, len }
    }
}

impl<I: Iterator<Item = Event> + Send> AddressStream for IterStream<I> {
    fn next_event(&mut self) -> Result<Option<Event>, Error> {
        Ok(self.it.next())
    }
    fn len_hint(&self) -> Option<u64> {
        self.len
    }
    fn fill(&mut self, buf: &mut Vec<Event>, upto: usize) -> Result<(), Error> {
        let n = upto.saturating_sub(buf.len());
        buf.extend(self.it.by_ref().take(n));
        Ok(())
    }
}

impl AddressStream for Box<dyn AddressStream> {
    fn next_event(&mut self) -> Result<Option<Event>, Error> {
        (**self).next_event()
    }
    fn len_hint(&self) -> Option<u64> {
        (**self).len_hint()
    }
    fn fill(&mut self, buf: &mut Vec<Event>, upto: usize) -> Result<(), Error> {
        (**self).fill(buf, upto)
    }
}
