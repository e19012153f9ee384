//! The API's wire format: one JSON object per line, both ways, as data (paths are JSON
//! strings, never split on spaces). Requests: `{"cmd":"ping"}`, `{"cmd":"ptsnap",
//! "file":NAME}`, `{"cmd":"snapshot-create","dir":NAME}`, `{"cmd":"pause"}`, `{"cmd":"resume"}`,
//! `{"cmd":"shutdown"}`, `{"cmd":"balloon","size_mib":N}`, `{"cmd":"balloon-stats"}`. Answers:
//! `{"ok":true,...}` or `{"ok":false,"error":MESSAGE}`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest request line, bytes; a longer one is refused and its client dropped.
pub const LINE_LIMIT: usize = 64 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Is the VMM there? Answers its vCPU count and snapshot directory.
    Ping {},
    /// A page-table capture written to `file`, a plain name inside the VMM's
    /// `--snapshot-dir`.
    Ptsnap {
        /// The file's name.
        file: String,
    },
    /// A whole-VM snapshot into `dir`, a new directory (plain name) inside the VMM's
    /// `--snapshot-dir`: pause every vCPU, save, resume.
    SnapshotCreate {
        /// The directory's name.
        dir: String,
        /// Write only the pages dirtied since this run's previous snapshot (needs
        /// `--track-dirty`); restore follows the chain.
        #[serde(default)]
        diff: bool,
    },
    /// Pause every vCPU.
    Pause {},
    /// Resume every vCPU.
    Resume {},
    /// End the run (exit reason `shutdown`, exit code 0).
    Shutdown {},
    /// Set the balloon's target size (`--balloon`): MiB the guest should give back.
    Balloon {
        /// The target, MiB (0 deflates it fully).
        size_mib: u64,
    },
    /// The balloon's target, `actual`, counters, contiguity and the guest's statistics.
    BalloonStats {},
}

/// A request line that is not a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Longer than [`LINE_LIMIT`].
    #[error("request longer than {LINE_LIMIT} bytes")]
    TooLong,
    /// Not one of the requests.
    #[error("bad request ({0}); send one JSON object per line, e.g. {{\"cmd\":\"ping\"}}")]
    Malformed(#[source] serde_json::Error),
}

/// Parses one request line (without its newline).
pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
    if line.len() > LINE_LIMIT {
        return Err(RequestError::TooLong);
    }
    serde_json::from_slice(line).map_err(RequestError::Malformed)
}

/// The answer line for `r` (with its newline): the error's message, sources included.
pub fn answer<E: std::error::Error>(r: &Result<Value, E>) -> Vec<u8> {
    let mut m = Map::new();
    match r {
        Ok(v) => {
            m.insert("ok".into(), Value::Bool(true));
            if let Value::Object(o) = v {
                m.extend(o.clone());
            }
        }
        Err(e) => {
            m.insert("ok".into(), Value::Bool(false));
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text = format!("{text}: {s_text}");
                }
                source = s.source();
            }
            m.insert("error".into(), Value::String(text));
        }
    }
    let mut line = serde_json::to_vec(&Value::Object(m)).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_objects_with_paths_as_data() {
        assert_eq!(parse(br#"{"cmd":"ping"}"#).ok(), Some(Request::Ping {}));
        assert_eq!(
            parse(br#"{"cmd":"ptsnap","file":"my dir/x\nshutdown"}"#).ok(),
            Some(Request::Ptsnap {
                file: "my dir/x\nshutdown".into()
            })
        );
        assert_eq!(
            parse(br#"{"cmd":"balloon","size_mib":64}"#).ok(),
            Some(Request::Balloon { size_mib: 64 })
        );
        assert_eq!(
            parse(br#"{"cmd":"balloon-stats"}"#).ok(),
            Some(Request::BalloonStats {})
        );
        for bad in [
            &b"snapshot /etc/x"[..],
            br#"{"cmd":"ptsnap"}"#,
            br#"{"cmd":"reboot"}"#,
            br#"{"cmd":"ping","extra":1}"#,
            br#"{"cmd":"balloon","size_mib":-1}"#,
            br#"{"cmd":"balloon"}"#,
            b"",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&vec![b' '; LINE_LIMIT + 1]).is_err());
    }

    #[test]
    fn answers_are_one_json_line() {
        let a = answer::<RequestError>(&Ok(serde_json::json!({"vcpus": 2})));
        assert_eq!(a, b"{\"ok\":true,\"vcpus\":2}\n");
        let e = answer(&Err(RequestError::TooLong));
        let v: Value = serde_json::from_slice(&e[..e.len() - 1]).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(e.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
