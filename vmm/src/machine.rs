//! The former home of the VM run; kept as re-exports of [`crate::vm`] for callers not yet
//! moved.

pub use crate::vm::*;
