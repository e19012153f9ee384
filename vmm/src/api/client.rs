//! The client side: one request, one answer.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::protocol::Request;
use super::Error;

/// How long a client waits for an answer (a capture of a large guest takes seconds).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `req` to the VMM at `path` and returns its answer object (`ok` was true).
pub fn request(path: &Path, req: &Request) -> Result<Value, Error> {
    let io = |source| Error::Io {
        path: path.into(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| Error::Connect {
        path: path.into(),
        source,
    })?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s)
        .take(super::protocol::LINE_LIMIT as u64)
        .read_line(&mut answer)
        .map_err(io)?;
    let bad = || Error::BadAnswer {
        path: path.into(),
        line: answer.clone(),
    };
    let v: Value = serde_json::from_str(answer.trim_end()).map_err(|_| bad())?;
    match v.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(v),
        Some(false) => Err(Error::Refused(
            v.get("error")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_string(),
        )),
        None => Err(bad()),
    }
}
