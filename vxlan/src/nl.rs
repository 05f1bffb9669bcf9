//! netagent's rtnetlink socket for the data plane: `nlsock`'s client bound to one namespace,
//! with every mutating request counted (the tests' "0 writes") and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use netlink_packet_route::RouteNetlinkMessage;
use netns::NetNs;
pub(crate) use nlsock::NlError;
use nlsock::{NETLINK_ROUTE, Sock};

use crate::error::{Error, Result};

/// Counts mutating kernel requests (netlink writes, namespace creations and deletions, sysctl
/// writes, nftables transactions) and calls an optional hook after each.
#[derive(Default)]
pub(crate) struct Counter {
    n: AtomicU64,
    #[allow(clippy::type_complexity)]
    hook: Mutex<Option<Box<dyn FnMut(u64) + Send>>>,
}

impl Counter {
    pub fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }

    pub fn add(&self, k: u64) {
        for _ in 0..k {
            let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(f) = self.hook.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                f(n);
            }
        }
    }

    pub fn set_hook(&self, f: Option<Box<dyn FnMut(u64) + Send>>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
}

impl Error {
    /// The kernel refused operation `op` in namespace `ns`.
    pub(crate) fn refused(op: impl Into<String>, ns: &str, e: NlError) -> Error {
        Error::Netlink {
            op: op.into(),
            ns: ns.to_string(),
            detail: e.to_string(),
            errno: e.errno,
        }
    }
}

impl From<nlsock::Error> for Error {
    fn from(e: nlsock::Error) -> Error {
        Error::Netlink {
            op: e.what,
            ns: e.ns,
            detail: e.detail,
            errno: e.errno,
        }
    }
}

/// A mutating request: the message, extra NLM_F_* flags and what it does (for errors).
pub(crate) struct Req {
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
    pub what: String,
}

impl Req {
    pub fn new(msg: RouteNetlinkMessage, flags: u16, what: impl Into<String>) -> Req {
        Req {
            msg,
            flags,
            what: what.into(),
        }
    }
}

pub(crate) struct Nl {
    sock: Sock,
    writes: Arc<Counter>,
}

impl Nl {
    /// Opens a NETLINK_ROUTE socket inside `ns` (the socket stays bound to it).
    pub fn open(ns: &NetNs, writes: Arc<Counter>) -> Result<Nl> {
        Ok(Nl {
            sock: Sock::open(ns, NETLINK_ROUTE)?,
            writes,
        })
    }

    pub fn ns_name(&self) -> &str {
        self.sock.ns()
    }

    /// Sends one mutating request and waits for its acknowledgement.
    pub fn request(&mut self, req: Req) -> Result<()> {
        let what = req.what.clone();
        match self.batch(vec![req])?.pop() {
            Some(Err(e)) => Err(Error::refused(what, self.ns_name(), e)),
            _ => Ok(()),
        }
    }

    /// Like [`Nl::request`] but returns the kernel's error for the caller to interpret.
    pub fn try_request(&mut self, req: Req) -> Result<std::result::Result<(), NlError>> {
        Ok(self.batch(vec![req])?.pop().unwrap_or(Err(NlError {
            errno: libc::EIO,
            msg: None,
        })))
    }

    /// Sends requests pipelined and returns the result of each, in order. Counts every request
    /// as a write. Fails as a whole only when the socket itself fails.
    pub fn batch(&mut self, reqs: Vec<Req>) -> Result<Vec<std::result::Result<(), NlError>>> {
        let n = reqs.len() as u64;
        let ns = self.sock.ns().to_string();
        let msgs = reqs.into_iter().map(|r| {
            tracing::debug!(ns = %ns, op = %r.what, "netlink write");
            (r.msg, r.flags)
        });
        let results = self.sock.batch(msgs)?;
        self.writes.add(n);
        Ok(results)
    }

    /// Sends a get request for one object; `None` if the kernel says there is none (ENODEV,
    /// ENOENT).
    pub fn get(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Option<RouteNetlinkMessage>> {
        let what = format!("get {what}");
        match self.sock.get(msg, &what)? {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.errno == libc::ENODEV || e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(Error::refused(what, self.ns_name(), e)),
        }
    }

    /// Sends a dump request and collects every answer; an entry with attributes this crate
    /// version cannot parse is skipped.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let all = self.sock.dump(msg, &format!("dump {what}"))?;
        Ok(all.into_iter().flatten().collect())
    }
}
