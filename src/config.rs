//! The node's settings: `pluresdb.toml` (in the data directory, or the file
//! given with `--config`), overridden by `PLURESDB_*` environment
//! variables, overridden by command-line flags.
//!
//! ```toml
//! # pluresdb.toml
//! api_addr = "127.0.0.1:34570"   # PLURESDB_API_ADDR, --api-addr
//! require_token = false          # PLURESDB_REQUIRE_TOKEN, --require-token
//! resolver = "last-writer-wins"  # PLURESDB_RESOLVER, --resolver
//! log = "warn"                   # PLURESDB_LOG (a tracing filter)
//! watch_buffer = 4096            # PLURESDB_WATCH_BUFFER: changes buffered per subscriber
//! store_cache_mib = 16           # PLURESDB_STORE_CACHE_MIB: the store's page cache, in MiB
//! bootstrap = ["10.0.0.5:34569"] # PLURESDB_BOOTSTRAP (comma-separated), --bootstrap
//! mdns = true                    # PLURESDB_MDNS, --no-mdns: find peers on the LAN
//! mdns_interfaces = ["eth0"]     # PLURESDB_MDNS_INTERFACES (comma-separated): only these (default: all)
//! quic = true                    # PLURESDB_QUIC, --no-quic: run the QUIC engine
//! libp2p = true                  # PLURESDB_LIBP2P, --no-libp2p: run the libp2p engine
//! libp2p_listen = ["/ip4/0.0.0.0/tcp/34571"]  # PLURESDB_LIBP2P_LISTEN, --libp2p-listen: its multiaddrs
//! dht = true                     # PLURESDB_DHT, --no-dht: take part in the DHT and find peers there
//! relay = false                  # PLURESDB_RELAY, --relay: serve as a circuit relay for the network's members
//! allowed_origins = ["http://localhost:3000"] # PLURESDB_ALLOWED_ORIGINS (comma-separated), --allowed-origin: web pages allowed to use the API
//! api_hosts = ["db.example.com"] # PLURESDB_API_HOSTS (comma-separated), --api-host: names the API answers to besides its addresses
//! max_clock_drift = "5m"         # PLURESDB_MAX_CLOCK_DRIFT, --max-clock-drift: how far ahead a received timestamp may be and take effect at once
//! browser_listen = "127.0.0.1:34573" # PLURESDB_BROWSER_LISTEN, --browser-listen: browser pages' WebSocket (default: off)
//! webrtc = true                  # PLURESDB_WEBRTC, --no-webrtc: offer browser pages WebRTC (with browser_listen)
//! webrtc_listen = "0.0.0.0:34574" # PLURESDB_WEBRTC_LISTEN, --webrtc-listen: its UDP socket (default: browser_listen's IP, port 0)
//! ```

use crate::cli::{Cli, Command, Resolver};
use crate::config_file::FileConfig;
use crate::InvalidInput;
use clap::ValueEnum;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The config file's name in the data directory.
pub const CONFIG_FILE: &str = "pluresdb.toml";

/// Where a setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "config file",
            Source::Env => "environment",
            Source::Flag => "flag",
        }
    }
}

/// A setting and its source.
#[derive(Clone, Debug)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// The effective settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    pub api_addr: Setting<SocketAddr>,
    pub require_token: Setting<bool>,
    pub resolver: Setting<Resolver>,
    pub log: Setting<String>,
    /// Changes buffered per change-feed subscriber before it is told it lagged.
    pub watch_buffer: Setting<usize>,
    /// The store's page cache in MiB (redb's cache of pages read and
    /// written): the largest part of a node's memory that grows with use.
    pub store_cache_mib: Setting<usize>,
    /// How far past this node's wall clock a received timestamp may lie and
    /// still take effect at once (later ones wait for their time), and how
    /// far peers' clocks may disagree with this node's before it corrects.
    pub max_clock_drift: Setting<std::time::Duration>,
    /// Nodes to connect to at start (`host:port`).
    pub bootstrap: Setting<Vec<String>>,
    /// Announce and browse on the LAN with mDNS.
    pub mdns: Setting<bool>,
    /// The interfaces mDNS runs on; empty means every one.
    pub mdns_interfaces: Setting<Vec<String>>,
    /// Run the QUIC engine.
    pub quic: Setting<bool>,
    /// Run the libp2p engine.
    pub libp2p: Setting<bool>,
    /// Where the libp2p engine listens (multiaddrs; empty: its defaults).
    pub libp2p_listen: Setting<Vec<String>>,
    /// Take part in the DHT and find the network's nodes there.
    pub dht: Setting<bool>,
    /// Serve as a circuit relay for the network's members.
    pub relay: Setting<bool>,
    /// Origins of web pages allowed to use the API (`scheme://host[:port]`)
    /// besides the node's own.
    pub allowed_origins: Setting<Vec<String>>,
    /// Names the API answers to besides its own addresses (`name` on any
    /// port, `name:port`), e.g. a reverse proxy's.
    pub api_hosts: Setting<Vec<String>>,
    /// Where browser pages connect over WebSocket; `None`: not at all.
    pub browser_listen: Setting<Option<SocketAddr>>,
    /// Offer browser pages WebRTC (with `browser_listen`).
    pub webrtc: Setting<bool>,
    /// The WebRTC engine's UDP address; `None`: `browser_listen`'s IP,
    /// port 0.
    pub webrtc_listen: Setting<Option<SocketAddr>>,
}

/// The log filter unless `PLURESDB_LOG` or `log` says otherwise: warnings,
/// but not Kademlia's "Failed to trigger bootstrap: No known peers", which
/// it repeats every 5 minutes on a node with no DHT neighbour yet (a lone
/// node, or one whose bootstrap is down; the libp2p engine says what its
/// DHT found).
const DEFAULT_LOG: &str = "warn,libp2p_kad=error";

/// The largest store cache a setting may ask for, in MiB (64 GiB).
const MAX_STORE_CACHE_MIB: usize = 64 * 1024;

/// Picks the first given of flag, environment, file and default.
fn pick<T>(flag: Option<T>, env: Option<T>, file: Option<T>, default: T) -> Setting<T> {
    match (flag, env, file) {
        (Some(value), _, _) => Setting { value, source: Source::Flag },
        (None, Some(value), _) => Setting { value, source: Source::Env },
        (None, None, Some(value)) => Setting { value, source: Source::File },
        (None, None, None) => Setting { value: default, source: Source::Default },
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse_addr(text: &str, whence: &str) -> anyhow::Result<SocketAddr> {
    text.trim().parse().map_err(|err| {
        InvalidInput(format!("{whence}: {text:?} is not an address (host:port with an IP, e.g. 127.0.0.1:34570): {err}")).into()
    })
}

fn parse_resolver(text: &str, whence: &str) -> anyhow::Result<Resolver> {
    Resolver::from_str(text.trim(), true)
        .map_err(|_| InvalidInput(format!("{whence}: unknown resolver {text:?} (last-writer-wins, first-writer-wins or keep-all)")).into())
}

/// A comma-separated list, trimmed, without empty items.
fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

/// A duration with its unit: `500ms`, `90s`, `5m`, `2h`, `1d`; from 1 s to
/// 365 days.
fn parse_drift(text: &str, whence: &str) -> anyhow::Result<std::time::Duration> {
    let bad = |why: &str| anyhow::Error::from(InvalidInput(format!("{whence}: {text:?} {why} (e.g. 5m, 90s, 1h)")));
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad("is not a number with a unit"))?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad("has no unit (ms, s, m, h or d)")),
    };
    let ms = number.checked_mul(unit_ms).ok_or_else(|| bad("is too long"))?;
    if !(1_000..=365 * 86_400_000).contains(&ms) {
        return Err(bad("is out of range (1 s to 365 d)"));
    }
    Ok(std::time::Duration::from_millis(ms))
}

/// A duration as [`parse_drift`] reads it, in the largest exact unit.
pub fn drift_text(duration: std::time::Duration) -> String {
    let ms = duration.as_millis();
    [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")]
        .into_iter()
        .find(|(unit, _)| ms.is_multiple_of(*unit))
        .map_or_else(|| format!("{ms}ms"), |(unit, name)| format!("{}{name}", ms / unit))
}

fn parse_bool(text: &str, whence: &str) -> anyhow::Result<bool> {
    match text.trim() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        other => Err(InvalidInput(format!("{whence}: {other:?} is not true or false")).into()),
    }
}

/// Reads the config for `cli`: the file named by `--config`, or
/// `pluresdb.toml` in the data directory if it exists.
pub fn load(cli: &Cli) -> anyhow::Result<Config> {
    let (path, required) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (cli.data_dir.join(CONFIG_FILE), false),
    };
    let (file, read) = read_file(&path, required)?;
    let whence = |key: &str| format!("{} ({key})", path.display());

    let flag_drift = match &cli.command {
        Command::Serve { max_clock_drift: Some(text), .. } => Some(parse_drift(text, "--max-clock-drift")?),
        _ => None,
    };
    let env_drift = env("PLURESDB_MAX_CLOCK_DRIFT").map(|v| parse_drift(&v, "PLURESDB_MAX_CLOCK_DRIFT")).transpose()?;
    let file_drift = file.max_clock_drift.as_deref().map(|v| parse_drift(v, &whence("max_clock_drift"))).transpose()?;
    let (flag_addr, flag_require, flag_bootstrap, flag_mdns, flag_origins, flag_hosts) = match &cli.command {
        Command::Serve { api_addr, require_token, bootstrap, no_mdns, allowed_origins, api_hosts, .. } => (
            *api_addr,
            require_token.then_some(true),
            (!bootstrap.is_empty()).then(|| bootstrap.clone()),
            no_mdns.then_some(false),
            (!allowed_origins.is_empty()).then(|| allowed_origins.clone()),
            (!api_hosts.is_empty()).then(|| api_hosts.clone()),
        ),
        _ => (None, None, None, None, None, None),
    };
    let origins = |list: Vec<String>, whence: &str| -> anyhow::Result<Vec<String>> {
        for origin in &list {
            pluresdb_server::Origin::parse(origin).map_err(|err| InvalidInput(format!("{whence}: {err}")))?;
        }
        Ok(list)
    };
    let hosts = |list: Vec<String>, whence: &str| -> anyhow::Result<Vec<String>> {
        for host in &list {
            pluresdb_server::ApiHost::parse(host).map_err(|err| InvalidInput(format!("{whence}: {err}")))?;
        }
        Ok(list)
    };
    let flag_origins = flag_origins.map(|l| origins(l, "--allowed-origin")).transpose()?;
    let env_origins = env("PLURESDB_ALLOWED_ORIGINS").map(|v| origins(list(&v), "PLURESDB_ALLOWED_ORIGINS")).transpose()?;
    let file_origins = file.allowed_origins.map(|l| origins(l, &whence("allowed_origins"))).transpose()?;
    let flag_hosts = flag_hosts.map(|l| hosts(l, "--api-host")).transpose()?;
    let env_hosts = env("PLURESDB_API_HOSTS").map(|v| hosts(list(&v), "PLURESDB_API_HOSTS")).transpose()?;
    let file_hosts = file.api_hosts.map(|l| hosts(l, &whence("api_hosts"))).transpose()?;
    let env_bootstrap =
        env("PLURESDB_BOOTSTRAP").map(|v| v.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect::<Vec<_>>());
    let env_mdns = env("PLURESDB_MDNS").map(|v| parse_bool(&v, "PLURESDB_MDNS")).transpose()?;
    let env_mdns_interfaces = env("PLURESDB_MDNS_INTERFACES").map(|v| list(&v));
    let flag_quic = matches!(&cli.command, Command::Serve { no_quic: true, .. }).then_some(false);
    let env_quic = env("PLURESDB_QUIC").map(|v| parse_bool(&v, "PLURESDB_QUIC")).transpose()?;
    let (flag_libp2p, flag_libp2p_listen, flag_dht) = match &cli.command {
        Command::Serve { no_libp2p, libp2p_listen, no_dht, .. } => {
            (no_libp2p.then_some(false), (!libp2p_listen.is_empty()).then(|| libp2p_listen.clone()), no_dht.then_some(false))
        }
        _ => (None, None, None),
    };
    let env_libp2p = env("PLURESDB_LIBP2P").map(|v| parse_bool(&v, "PLURESDB_LIBP2P")).transpose()?;
    let env_libp2p_listen = env("PLURESDB_LIBP2P_LISTEN").map(|v| list(&v));
    let env_dht = env("PLURESDB_DHT").map(|v| parse_bool(&v, "PLURESDB_DHT")).transpose()?;
    let flag_relay = matches!(&cli.command, Command::Serve { relay: true, .. }).then_some(true);
    let env_relay = env("PLURESDB_RELAY").map(|v| parse_bool(&v, "PLURESDB_RELAY")).transpose()?;
    let (flag_browser, flag_webrtc, flag_webrtc_listen) = match &cli.command {
        Command::Serve { browser_listen, no_webrtc, webrtc_listen, .. } => {
            (browser_listen.map(Some), no_webrtc.then_some(false), webrtc_listen.map(Some))
        }
        _ => (None, None, None),
    };
    let env_browser = env("PLURESDB_BROWSER_LISTEN").map(|v| parse_addr(&v, "PLURESDB_BROWSER_LISTEN").map(Some)).transpose()?;
    let file_browser = file.browser_listen.as_deref().map(|v| parse_addr(v, &whence("browser_listen")).map(Some)).transpose()?;
    let env_webrtc = env("PLURESDB_WEBRTC").map(|v| parse_bool(&v, "PLURESDB_WEBRTC")).transpose()?;
    let env_webrtc_listen = env("PLURESDB_WEBRTC_LISTEN").map(|v| parse_addr(&v, "PLURESDB_WEBRTC_LISTEN").map(Some)).transpose()?;
    let file_webrtc_listen = file.webrtc_listen.as_deref().map(|v| parse_addr(v, &whence("webrtc_listen")).map(Some)).transpose()?;
    let env_addr = env("PLURESDB_API_ADDR").map(|v| parse_addr(&v, "PLURESDB_API_ADDR")).transpose()?;
    let file_addr = file.api_addr.as_deref().map(|v| parse_addr(v, &whence("api_addr"))).transpose()?;
    let default_addr = parse_addr(pluresdb_server::DEFAULT_API_ADDR, "default")?;

    let env_require = env("PLURESDB_REQUIRE_TOKEN").map(|v| parse_bool(&v, "PLURESDB_REQUIRE_TOKEN")).transpose()?;
    let env_resolver = env("PLURESDB_RESOLVER").map(|v| parse_resolver(&v, "PLURESDB_RESOLVER")).transpose()?;
    let file_resolver = file.resolver.as_deref().map(|v| parse_resolver(v, &whence("resolver"))).transpose()?;

    let positive = |n: usize, whence: &str| -> anyhow::Result<usize> {
        if (1..=1_000_000).contains(&n) {
            Ok(n)
        } else {
            Err(InvalidInput(format!("{whence}: {n} is out of range (1 to 1000000)")).into())
        }
    };
    let env_watch_buffer = env("PLURESDB_WATCH_BUFFER")
        .map(|v| v.trim().parse::<usize>().map_err(|e| anyhow::Error::from(InvalidInput(format!("PLURESDB_WATCH_BUFFER: {v:?}: {e}")))))
        .transpose()?
        .map(|n| positive(n, "PLURESDB_WATCH_BUFFER"))
        .transpose()?;
    let file_watch_buffer = file.watch_buffer.map(|n| positive(n, &whence("watch_buffer"))).transpose()?;
    let cache_mib = |n: usize, whence: &str| -> anyhow::Result<usize> {
        if (1..=MAX_STORE_CACHE_MIB).contains(&n) {
            Ok(n)
        } else {
            Err(InvalidInput(format!("{whence}: {n} MiB is out of range (1 to {MAX_STORE_CACHE_MIB})")).into())
        }
    };
    let env_store_cache = env("PLURESDB_STORE_CACHE_MIB")
        .map(|v| v.trim().parse::<usize>().map_err(|e| anyhow::Error::from(InvalidInput(format!("PLURESDB_STORE_CACHE_MIB: {v:?}: {e}")))))
        .transpose()?
        .map(|n| cache_mib(n, "PLURESDB_STORE_CACHE_MIB"))
        .transpose()?;
    let file_store_cache = file.store_cache_mib.map(|n| cache_mib(n, &whence("store_cache_mib"))).transpose()?;
    Ok(Config {
        file: read.then_some(path),
        api_addr: pick(flag_addr, env_addr, file_addr, default_addr),
        require_token: pick(flag_require, env_require, file.require_token, false),
        resolver: pick(cli.resolver, env_resolver, file_resolver, Resolver::LastWriterWins),
        log: pick(None, env("PLURESDB_LOG"), file.log, DEFAULT_LOG.to_owned()),
        watch_buffer: pick(None, env_watch_buffer, file_watch_buffer, pluresdb_runtime::RuntimeOptions::default().watch_buffer),
        store_cache_mib: pick(None, env_store_cache, file_store_cache, pluresdb_store_redb::DEFAULT_CACHE_BYTES >> 20),
        max_clock_drift: pick(flag_drift, env_drift, file_drift, pluresdb_core::DEFAULT_MAX_CLOCK_DRIFT),
        bootstrap: pick(flag_bootstrap, env_bootstrap, file.bootstrap, Vec::new()),
        mdns: pick(flag_mdns, env_mdns, file.mdns, true),
        mdns_interfaces: pick(None, env_mdns_interfaces, file.mdns_interfaces, Vec::new()),
        quic: pick(flag_quic, env_quic, file.quic, true),
        libp2p: pick(flag_libp2p, env_libp2p, file.libp2p, true),
        libp2p_listen: pick(flag_libp2p_listen, env_libp2p_listen, file.libp2p_listen, Vec::new()),
        dht: pick(flag_dht, env_dht, file.dht, true),
        relay: pick(flag_relay, env_relay, file.relay, false),
        allowed_origins: pick(flag_origins, env_origins, file_origins, Vec::new()),
        api_hosts: pick(flag_hosts, env_hosts, file_hosts, Vec::new()),
        browser_listen: pick(flag_browser, env_browser, file_browser, None),
        webrtc: pick(flag_webrtc, env_webrtc, file.webrtc, true),
        webrtc_listen: pick(flag_webrtc_listen, env_webrtc_listen, file_webrtc_listen, None),
    })
}

fn read_file(path: &Path, required: bool) -> anyhow::Result<(FileConfig, bool)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => return Ok((FileConfig::default(), false)),
        Err(err) => return Err(InvalidInput(format!("cannot read config file {}: {err}", path.display())).into()),
    };
    let file = FileConfig::parse(&text).map_err(|err| InvalidInput(format!("config file {} is invalid: {err}", path.display())))?;
    Ok((file, true))
}

impl Config {
    /// The store's page cache in bytes.
    pub fn store_cache_bytes(&self) -> usize {
        self.store_cache_mib.value << 20
    }

    /// The settings as a JSON document (`config show --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let entry = |value: serde_json::Value, source: Source| serde_json::json!({"value": value, "source": source.name()});
        serde_json::json!({
            "file": self.file.as_ref().map(|p| p.display().to_string()),
            "api_addr": entry(self.api_addr.value.to_string().into(), self.api_addr.source),
            "require_token": entry(self.require_token.value.into(), self.require_token.source),
            "resolver": entry(resolver_name(self.resolver.value).into(), self.resolver.source),
            "log": entry(self.log.value.clone().into(), self.log.source),
            "watch_buffer": entry(self.watch_buffer.value.into(), self.watch_buffer.source),
            "store_cache_mib": entry(self.store_cache_mib.value.into(), self.store_cache_mib.source),
            "max_clock_drift": entry(drift_text(self.max_clock_drift.value).into(), self.max_clock_drift.source),
            "bootstrap": entry(self.bootstrap.value.clone().into(), self.bootstrap.source),
            "mdns": entry(self.mdns.value.into(), self.mdns.source),
            "mdns_interfaces": entry(self.mdns_interfaces.value.clone().into(), self.mdns_interfaces.source),
            "quic": entry(self.quic.value.into(), self.quic.source),
            "libp2p": entry(self.libp2p.value.into(), self.libp2p.source),
            "libp2p_listen": entry(self.libp2p_listen.value.clone().into(), self.libp2p_listen.source),
            "dht": entry(self.dht.value.into(), self.dht.source),
            "relay": entry(self.relay.value.into(), self.relay.source),
            "allowed_origins": entry(self.allowed_origins.value.clone().into(), self.allowed_origins.source),
            "api_hosts": entry(self.api_hosts.value.clone().into(), self.api_hosts.source),
            "browser_listen": entry(self.browser_listen.value.map(|a| a.to_string()).into(), self.browser_listen.source),
            "webrtc": entry(self.webrtc.value.into(), self.webrtc.source),
            "webrtc_listen": entry(self.webrtc_listen.value.map(|a| a.to_string()).into(), self.webrtc_listen.source),
        })
    }

    /// The settings as a config file, each with its source.
    pub fn to_toml_text(&self) -> String {
        let mut out = match &self.file {
            Some(path) => format!("# read from {}\n", path.display()),
            None => "# no config file; defaults, environment and flags\n".to_owned(),
        };
        let line = |key: &str, value: String, source: Source| format!("{key} = {value}  # {}\n", source.name());
        out += &line("api_addr", format!("{:?}", self.api_addr.value.to_string()), self.api_addr.source);
        out += &line("require_token", self.require_token.value.to_string(), self.require_token.source);
        out += &line("resolver", format!("{:?}", resolver_name(self.resolver.value)), self.resolver.source);
        out += &line("log", format!("{:?}", self.log.value), self.log.source);
        out += &line("watch_buffer", self.watch_buffer.value.to_string(), self.watch_buffer.source);
        out += &line("store_cache_mib", self.store_cache_mib.value.to_string(), self.store_cache_mib.source);
        out += &line("max_clock_drift", format!("{:?}", drift_text(self.max_clock_drift.value)), self.max_clock_drift.source);
        out += &line("bootstrap", format!("{:?}", self.bootstrap.value), self.bootstrap.source);
        out += &line("mdns", self.mdns.value.to_string(), self.mdns.source);
        out += &line("mdns_interfaces", format!("{:?}", self.mdns_interfaces.value), self.mdns_interfaces.source);
        out += &line("quic", self.quic.value.to_string(), self.quic.source);
        out += &line("libp2p", self.libp2p.value.to_string(), self.libp2p.source);
        out += &line("libp2p_listen", format!("{:?}", self.libp2p_listen.value), self.libp2p_listen.source);
        out += &line("dht", self.dht.value.to_string(), self.dht.source);
        out += &line("relay", self.relay.value.to_string(), self.relay.source);
        out += &line("allowed_origins", format!("{:?}", self.allowed_origins.value), self.allowed_origins.source);
        out += &line("api_hosts", format!("{:?}", self.api_hosts.value), self.api_hosts.source);
        // An unset address is left out (TOML has no null); the comment says so.
        let address = |key: &str, value: Option<SocketAddr>, source: Source| match value {
            Some(addr) => line(key, format!("{:?}", addr.to_string()), source),
            None => format!("# {key} is not set  # {}\n", source.name()),
        };
        out += &address("browser_listen", self.browser_listen.value, self.browser_listen.source);
        out += &line("webrtc", self.webrtc.value.to_string(), self.webrtc.source);
        out += &address("webrtc_listen", self.webrtc_listen.value, self.webrtc_listen.source);
        out
    }

    /// What the API takes from browsers, from `allowed_origins` and
    /// `api_hosts` (checked when the settings were read).
    pub fn browser_policy(&self) -> anyhow::Result<pluresdb_server::BrowserPolicy> {
        let hosts = self.api_hosts.value.iter().map(|h| pluresdb_server::ApiHost::parse(h)).collect::<Result<_, _>>()?;
        let origins = self.allowed_origins.value.iter().map(|o| pluresdb_server::Origin::parse(o)).collect::<Result<_, _>>()?;
        Ok(pluresdb_server::BrowserPolicy::new(hosts, origins))
    }
}

pub fn resolver_name(resolver: Resolver) -> &'static str {
    match resolver {
        Resolver::LastWriterWins => "last-writer-wins",
        Resolver::FirstWriterWins => "first-writer-wins",
        Resolver::KeepAll => "keep-all",
    }
}
