//! Blame is a type: every failed attempt is classified once, where it happens, as
//! a region fault, a client fault or a local fault. Only region faults move a
//! region's health; the other two are counted on their own.

use std::io;

/// How an attempt failed because of the region: the only kind that feeds passive
/// ejection, failover metrics and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Connection refused, timed out or closed before the request was taken.
    Connect = 0,
    /// No response head within `response_timeout` of the request body's end.
    Timeout = 1,
    /// Reset or closed while the region owed a response.
    Reset = 2,
    /// A 5xx answer.
    Status5xx = 3,
}

impl FailureKind {
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Connect,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::Status5xx,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Status5xx => "status_5xx",
        }
    }

    pub fn from_u8(v: u8) -> FailureKind {
        Self::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(FailureKind::Connect)
    }
}

/// A request that failed because of its client: never the region's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// The request body broke its framing (a bad chunk size, a bad chunk end).
    MalformedBody = 0,
    /// The client went away before its request body was complete.
    Gone = 1,
    /// The client sent nothing of its body for `request_body_timeout`.
    BodyTimeout = 2,
}

impl ClientFault {
    pub const ALL: [ClientFault; 3] = [
        ClientFault::MalformedBody,
        ClientFault::Gone,
        ClientFault::BodyTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientFault::MalformedBody => "malformed_body",
            ClientFault::Gone => "client_gone",
            ClientFault::BodyTimeout => "body_timeout",
        }
    }

    /// The fault of a client body that failed with `e` (hyper's server side): a
    /// framing error (hyper reports a bad chunk as invalid input or data) or the
    /// client gone (end of stream too early, reset).
    pub fn of_body_error(e: &hyper::Error) -> ClientFault {
        if e.is_parse() {
            return ClientFault::MalformedBody;
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                if matches!(
                    io.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
                ) {
                    return ClientFault::MalformedBody;
                }
            }
            cur = c.source();
        }
        ClientFault::Gone
    }
}

/// A failure of the router's own resources: never a region's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFault {
    /// EMFILE, ENFILE: out of file descriptors.
    Descriptors = 0,
    /// ENOBUFS, ENOMEM: out of kernel buffers or memory.
    Memory = 1,
    /// EADDRNOTAVAIL, EADDRINUSE on connect: out of local ports.
    Addresses = 2,
    /// The router's own settings make the connection impossible (an endpoint
    /// name that cannot be a TLS server name).
    Config = 3,
}

impl LocalFault {
    pub const COUNT: usize = 4;
    pub const ALL: [LocalFault; Self::COUNT] = [
        LocalFault::Descriptors,
        LocalFault::Memory,
        LocalFault::Addresses,
        LocalFault::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LocalFault::Descriptors => "descriptors",
            LocalFault::Memory => "memory",
            LocalFault::Addresses => "addresses",
            LocalFault::Config => "config",
        }
    }

    /// Whether an I/O error is about this process's or host's resources rather
    /// than the peer.
    pub fn of_io(e: &io::Error) -> Option<LocalFault> {
        const EADDRINUSE: i32 = 98;
        const EADDRNOTAVAIL: i32 = 99;
        const ENOBUFS: i32 = 105;
        const ENOMEM: i32 = 12;
        const ENFILE: i32 = 23;
        const EMFILE: i32 = 24;
        if e.kind() == io::ErrorKind::OutOfMemory {
            return Some(LocalFault::Memory);
        }
        match e.raw_os_error()? {
            EMFILE | ENFILE => Some(LocalFault::Descriptors),
            ENOBUFS | ENOMEM => Some(LocalFault::Memory),
            EADDRNOTAVAIL | EADDRINUSE => Some(LocalFault::Addresses),
            _ => None,
        }
    }

    /// The local fault somewhere in an error's chain of causes, if any.
    pub fn in_chain(e: &(dyn std::error::Error + 'static)) -> Option<LocalFault> {
        let mut cur = Some(e);
        while let Some(c) = cur {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                if let Some(f) = LocalFault::of_io(io) {
                    return Some(f);
                }
            }
            cur = c.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_memory_and_port_exhaustion_are_local() {
        for (errno, fault) in [
            (24, LocalFault::Descriptors),
            (23, LocalFault::Descriptors),
            (105, LocalFault::Memory),
            (99, LocalFault::Addresses),
        ] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(LocalFault::of_io(&e), Some(fault), "errno {errno}");
        }
    }

    #[test]
    fn refused_reset_and_unreachable_are_the_peers() {
        for errno in [111, 104, 113, 110] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(LocalFault::of_io(&e), None, "errno {errno}");
        }
    }

    #[test]
    fn a_local_cause_is_found_under_wrapping_errors() {
        #[derive(Debug, thiserror::Error)]
        #[error("connect to x")]
        struct Wrap(#[source] io::Error);
        let e = Wrap(io::Error::from_raw_os_error(24));
        assert_eq!(LocalFault::in_chain(&e), Some(LocalFault::Descriptors));
    }
}
