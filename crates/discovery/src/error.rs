//! The discovery crate's error type.

/// The result of discovery operations.
pub type Result<T, E = DiscoveryError> = std::result::Result<T, E>;

/// What went wrong, naming the step that failed. Problems with what other
/// nodes announce are never errors: such announcements are skipped (and
/// logged at debug level).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The configuration cannot work: a service type that is not
    /// `_name._tcp` or `_name._udp` with a name of at most 15 characters, an
    /// empty or overlong service name, a local peer whose id is not a peer
    /// id or whose port is 0.
    #[error("invalid discovery configuration: {0}")]
    Config(String),
    /// Starting the mDNS daemon (its thread and sockets) failed.
    #[error("cannot start the mDNS daemon: {reason}")]
    MdnsDaemon {
        /// The daemon's explanation.
        reason: String,
    },
    /// Subscribing to announcements of the service type failed.
    #[error("cannot browse for {service_type}: {reason}")]
    Browse {
        /// The full service type (`_pluresdb._tcp.local.`).
        service_type: String,
        /// The daemon's explanation.
        reason: String,
    },
    /// Registering this node's service failed.
    #[error("cannot announce {instance}: {reason}")]
    Announce {
        /// The service instance's full name.
        instance: String,
        /// The daemon's explanation.
        reason: String,
    },
    /// A method that needs a started discovery was called before
    /// `start_discovery`.
    #[error("discovery is not started")]
    NotStarted,
    /// `start_discovery` was called after `stop`: a stopped discovery stays
    /// stopped (make a new one).
    #[error("discovery is stopped")]
    Stopped,
}
