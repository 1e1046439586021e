//! [`MdnsDriver`]: announces this node and browses for others with
//! mdns-sd, feeding what it hears into the [`SharedDirectory`]. The daemon
//! (its thread and sockets: see the crate docs) is driven only through its
//! command channel; browse events are read by one tokio task.

use crate::announcement::{service_names, txt_properties, Announcement};
use crate::directory::SharedDirectory;
use crate::error::{DiscoveryError, Result};
use crate::peer::LocalPeer;
use chrono::Utc;
use mdns_sd::{ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
use pluresdb_net::DiscoveryConfig;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long `stop` waits for the daemon to confirm each step.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// mdns-sd repeats a goodbye 120 ms after the first one (in case a listener
/// missed it); `stop` waits this long so that the repeat goes out before the
/// daemon shuts down.
const GOODBYE_REPEAT_WAIT: Duration = Duration::from_millis(150);

/// The mDNS side of discovery while it runs.
pub(crate) struct MdnsDriver {
    daemon: ServiceDaemon,
    /// The full name of this node's registered service, once announced.
    registered: Mutex<Option<String>>,
    browse: JoinHandle<()>,
}

impl MdnsDriver {
    /// Starts the daemon and browses for `ty_domain`
    /// (`_pluresdb._tcp.local.`), recording announcements in `directory`.
    /// With `interfaces` non-empty, mDNS runs on those interfaces (by name)
    /// only.
    pub(crate) fn start(ty_domain: &str, interfaces: &[String], directory: Arc<SharedDirectory>) -> Result<Self> {
        let daemon = ServiceDaemon::new().map_err(|err| DiscoveryError::MdnsDaemon { reason: err.to_string() })?;
        if !interfaces.is_empty() {
            let present: Vec<String> = if_addrs::get_if_addrs().map(|all| all.into_iter().map(|i| i.name).collect()).unwrap_or_default();
            for name in interfaces.iter().filter(|name| !present.contains(name)) {
                tracing::warn!(interface = %name, ?present, "mDNS is limited to an interface this machine does not have (now)");
            }
            let only = daemon
                .disable_interface(mdns_sd::IfKind::All)
                .and_then(|()| interfaces.iter().try_for_each(|name| daemon.enable_interface(mdns_sd::IfKind::Name(name.clone()))));
            if let Err(err) = only {
                let _ = daemon.shutdown();
                return Err(DiscoveryError::MdnsDaemon { reason: format!("cannot limit mDNS to {interfaces:?}: {err}") });
            }
        }
        let events = match daemon.browse(ty_domain) {
            Ok(events) => events,
            Err(err) => {
                let _ = daemon.shutdown();
                return Err(DiscoveryError::Browse { service_type: ty_domain.to_owned(), reason: err.to_string() });
            }
        };
        // The daemon drops a subscriber whose channel fills up; this task
        // only moves events into the directory, so it keeps up.
        let browse = tokio::spawn(async move {
            while let Ok(event) = events.recv_async().await {
                handle_event(&directory, event);
            }
            tracing::debug!("mDNS browsing ended");
        });
        Ok(Self { daemon, registered: Mutex::new(None), browse })
    }

    /// Registers (or registers again) `local`'s service. With no explicit
    /// addresses the daemon announces every interface's addresses and
    /// follows their changes.
    pub(crate) fn announce(&self, config: &DiscoveryConfig, local: &LocalPeer) -> Result<()> {
        let names = service_names(config, local).map_err(DiscoveryError::Config)?;
        let properties = txt_properties(local);
        let fullname = format!("{}.{}", names.instance, names.ty_domain);
        let announce_error = |err: mdns_sd::Error| DiscoveryError::Announce { instance: fullname.clone(), reason: err.to_string() };
        let info = if local.addresses.is_empty() {
            ServiceInfo::new(&names.ty_domain, &names.instance, &names.host, (), local.port, &properties[..])
                .map(ServiceInfo::enable_addr_auto)
        } else {
            ServiceInfo::new(&names.ty_domain, &names.instance, &names.host, &local.addresses[..], local.port, &properties[..])
        }
        .map_err(announce_error)?;
        let registered_name = info.get_fullname().to_owned();
        self.daemon.register(info).map_err(announce_error)?;
        tracing::debug!(instance = %registered_name, port = local.port, "announced on mDNS");
        *self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(registered_name);
        Ok(())
    }

    /// Withdraws the announcement (goodbye packets, sent twice), waits for
    /// them to go out and shuts the daemon down. Takes up to about 2.2 s if
    /// the daemon does not answer, typically 150 ms.
    pub(crate) async fn stop(self) {
        if let Some(fullname) = self.take_registered() {
            match self.daemon.unregister(&fullname) {
                Ok(status) => match tokio::time::timeout(CONFIRM_TIMEOUT, status.recv_async()).await {
                    Ok(Ok(status)) => tracing::debug!(instance = %fullname, ?status, "withdrew the mDNS announcement"),
                    Ok(Err(_)) | Err(_) => tracing::debug!(instance = %fullname, "the mDNS daemon did not confirm the withdrawal"),
                },
                Err(err) => tracing::debug!(instance = %fullname, error = %err, "cannot withdraw the mDNS announcement"),
            }
            tokio::time::sleep(GOODBYE_REPEAT_WAIT).await;
        }
        match self.daemon.shutdown() {
            Ok(status) => {
                if tokio::time::timeout(CONFIRM_TIMEOUT, status.recv_async()).await.is_err() {
                    tracing::debug!("the mDNS daemon did not confirm its shutdown");
                }
            }
            Err(err) => tracing::debug!(error = %err, "cannot shut the mDNS daemon down"),
        }
        self.browse.abort();
    }

    /// Withdraws the announcement and shuts the daemon down without waiting
    /// (for `Drop`): one goodbye goes out, the repeat may not.
    pub(crate) fn abandon(self) {
        if let Some(fullname) = self.take_registered() {
            let _ = self.daemon.unregister(&fullname);
        }
        let _ = self.daemon.shutdown();
        self.browse.abort();
    }

    fn take_registered(&self) -> Option<String> {
        self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Records one browse event in the directory.
fn handle_event(directory: &SharedDirectory, event: ServiceEvent) {
    match event {
        ServiceEvent::ServiceResolved(service) => {
            let ips = service.get_addresses().iter().map(ScopedIp::to_ip_addr);
            let parsed = Announcement::parse(service.get_fullname(), service.get_port(), ips, |key| service.get_property_val_str(key));
            match parsed {
                Ok(announcement) => {
                    let peer = announcement.peer_id.clone();
                    if directory.update(|d| d.record_mdns(announcement, Utc::now())) {
                        tracing::debug!(%peer, instance = %service.get_fullname(), "found a peer on mDNS");
                    }
                }
                Err(reason) => tracing::debug!(instance = %service.get_fullname(), %reason, "mDNS announcement ignored"),
            }
        }
        ServiceEvent::ServiceRemoved(_, fullname) => {
            let removed = directory.update(|d| d.remove_mdns(&fullname));
            if removed {
                tracing::debug!(instance = %fullname, "a peer withdrew its mDNS announcement");
            }
        }
        _ => {}
    }
}
