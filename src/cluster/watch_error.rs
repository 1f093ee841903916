//! What went wrong with a list or watch on the API server, as a typed error with a short
//! reason label (the `reason` label of `clusterway_api_watch_errors_total`).
//!
//! kube-runtime's watcher reports errors by phase (initial list, watch start, watch stream)
//! with the client error inside; this module names the failure mode an operator acts on
//! (the server is unreachable, rejects the credentials, forbids the resource, is failing,
//! or the stream broke). Pure: no I/O.

use ::kube::runtime::watcher;

/// One failed list or watch attempt, by failure mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// No HTTP answer: connection refused or reset, TLS or DNS failure, a timeout.
    #[error("API server unreachable: {0}")]
    Unreachable(String),
    /// A watch that was streaming broke off (connection dropped, stalled, unreadable).
    #[error("watch stream broke: {0}")]
    StreamBroken(String),
    /// 401: the credentials are not (or no longer) accepted.
    #[error("credentials rejected (HTTP 401): {0}")]
    Unauthorized(String),
    /// 403: RBAC does not allow list/watch on the resource.
    #[error("forbidden (HTTP 403): {0}")]
    Forbidden(String),
    /// 404: the resource is not served (ServiceCIDR before Kubernetes 1.33).
    #[error("not served (HTTP 404): {0}")]
    NotFound(String),
    /// 410: the resourceVersion is older than the server's history; the watcher re-lists.
    #[error("resource version expired (HTTP 410): {0}")]
    Gone(String),
    /// 429: the server asks the client to slow down.
    #[error("throttled (HTTP 429): {0}")]
    Throttled(String),
    /// 5xx: the server failed.
    #[error("server error (HTTP {code}): {message}")]
    Server { code: u16, message: String },
    /// Another HTTP error status.
    #[error("HTTP {code}: {message}")]
    Http { code: u16, message: String },
    /// The server answered something the watcher cannot use (no resourceVersion).
    #[error("unusable answer: {0}")]
    Protocol(String),
}

impl WatchError {
    /// Every label, in a fixed order (for counters and the metric).
    pub const LABELS: [&'static str; 10] = [
        "unreachable",
        "stream_broken",
        "unauthorized",
        "forbidden",
        "not_found",
        "gone",
        "throttled",
        "server_error",
        "http_error",
        "protocol",
    ];

    /// The `reason` label.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Position of [`Self::label`] in [`Self::LABELS`].
    pub fn index(&self) -> usize {
        match self {
            Self::Unreachable(_) => 0,
            Self::StreamBroken(_) => 1,
            Self::Unauthorized(_) => 2,
            Self::Forbidden(_) => 3,
            Self::NotFound(_) => 4,
            Self::Gone(_) => 5,
            Self::Throttled(_) => 6,
            Self::Server { .. } => 7,
            Self::Http { .. } => 8,
            Self::Protocol(_) => 9,
        }
    }

    /// The HTTP status, when the server answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized(_) => Some(401),
            Self::Forbidden(_) => Some(403),
            Self::NotFound(_) => Some(404),
            Self::Gone(_) => Some(410),
            Self::Throttled(_) => Some(429),
            Self::Server { code, .. } | Self::Http { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn from_status(code: u16, message: String) -> Self {
        match code {
            401 => Self::Unauthorized(message),
            403 => Self::Forbidden(message),
            404 => Self::NotFound(message),
            410 => Self::Gone(message),
            429 => Self::Throttled(message),
            500..=599 => Self::Server { code, message },
            _ => Self::Http { code, message },
        }
    }

    /// Classifies an error of kube-runtime's watcher.
    pub fn from_watcher(e: &watcher::Error) -> Self {
        let (client, in_stream) = match e {
            watcher::Error::InitialListFailed(c) | watcher::Error::WatchStartFailed(c) => {
                (c, false)
            }
            watcher::Error::WatchFailed(c) => (c, true),
            watcher::Error::WatchError(s) => return Self::from_status(s.code, s.message.clone()),
            watcher::Error::NoResourceVersion => return Self::Protocol(e.to_string()),
        };
        match client {
            ::kube::Error::Api(s) => Self::from_status(s.code, s.message.clone()),
            other => {
                let text = super::kubeconfig::error_chain(other);
                if in_stream {
                    Self::StreamBroken(text)
                } else {
                    Self::Unreachable(text)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::core::Status;

    fn status(code: u16) -> Box<Status> {
        Box::new(Status::failure("boom", "Reason").with_code(code))
    }

    #[test]
    fn errors_are_named_by_failure_mode() {
        let api = |code| ::kube::Error::Api(status(code));
        let cases = [
            (watcher::Error::InitialListFailed(api(401)), "unauthorized"),
            (watcher::Error::WatchStartFailed(api(403)), "forbidden"),
            (watcher::Error::InitialListFailed(api(404)), "not_found"),
            (watcher::Error::WatchError(status(410)), "gone"),
            (watcher::Error::WatchStartFailed(api(429)), "throttled"),
            (watcher::Error::WatchStartFailed(api(503)), "server_error"),
            (watcher::Error::InitialListFailed(api(400)), "http_error"),
            (
                watcher::Error::WatchFailed(::kube::Error::ReadEvents(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                ))),
                "stream_broken",
            ),
            (
                watcher::Error::WatchStartFailed(::kube::Error::ReadEvents(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))),
                "unreachable",
            ),
            (watcher::Error::NoResourceVersion, "protocol"),
        ];
        for (e, label) in cases {
            let w = WatchError::from_watcher(&e);
            assert_eq!(w.label(), label, "{e}");
            assert_eq!(WatchError::LABELS[w.index()], label);
        }
        let e = WatchError::from_watcher(&watcher::Error::WatchStartFailed(api(503)));
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.to_string(), "server error (HTTP 503): boom");
    }
}
