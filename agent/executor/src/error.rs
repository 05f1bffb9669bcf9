//! The executor's errors.

use std::path::PathBuf;

/// Why an executor step failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runner(#[from] crate::runner::Error),
    #[error("gateway bridge addressing: {0}")]
    Ipam(#[from] ipam::Error),
    #[error("overlay data plane: {0}")]
    Dataplane(String),
    /// No more endpoints fit on a network on this node (see [`vxlan::Error::BridgeFull`]).
    #[error("{0}")]
    NetworkFull(String),
    #[error("injected failure ({} exists)", .0.display())]
    Injected(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
