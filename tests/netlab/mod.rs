//! The network lab: topologies of Linux network namespaces for integration
//! tests that run real `pluresdb serve` processes on separate hosts.
//!
//! A [`Lab`] is a set of namespaces created for one test:
//!
//! - one "switch" namespace (`<id>-sw`) holding the bridges (`br1` for
//!   10.77.1.0/24, `br2` for 10.77.2.0/24), with multicast snooping off so
//!   multicast (mDNS) floods to every port of a bridge;
//! - one namespace per host (`<id>-h<i>`) with `lo` up, one interface
//!   `eth0` plugged into a bridge, an address 10.77.<lan>.<10 + index>/24
//!   and a multicast route (224.0.0.0/4 dev eth0);
//! - for [`Lab::routed`], a router namespace (`<id>-r`) joining the two
//!   LANs with IPv4 forwarding on (no multicast routing: multicast stays on
//!   its LAN);
//! - for [`Lab::nat`], a "public" segment (LAN 1) and private LANs 2, 3,
//!   ... each behind its own router namespace (`<id>-r<k>`) that does NAT
//!   by one of the [`Nat`] recipes with nftables in its own namespace.
//!
//! Nothing is created in the root namespace: the veth pairs are created in
//! the switch namespace with their host end moved straight into the host's
//! namespace, so deleting the lab's namespaces removes every interface. The
//! `<id>` is unique per lab (`pl<pid in hex>n<counter>`), so labs of
//! parallel tests and of parallel test processes never collide. Dropping a
//! [`Lab`] (also while a test panics) kills its nodes and deletes its
//! namespaces; when the test is failing it first prints the tail of each
//! node's log.
//!
//! The test process stays in the root namespace, so it cannot reach a
//! node's API (on 127.0.0.1 inside the host's namespace): [`Host`] drives
//! its node with the CLI run inside the same namespace
//! (`ip netns exec <ns> pluresdb --data-dir <dir> ...`), which finds the
//! node through the `api.addr` file in the data directory.
//!
//! Link faults are applied in the switch, on the host's port: packet loss
//! and partitions with nftables rules (this kernel has no netem) in a
//! `bridge` table of the switch namespace, so a dropped packet is lost on
//! the wire as on a real link (a drop in the sender's own output hook would
//! instead fail its `sendmsg` with EPERM); cuts by setting the switch's end
//! of the host's cable down.
//!
//! Every lab test starts with `if !netlab::supported() { return; }`: outside
//! root or without `ip`, `nft` and `ping` it prints why it is skipped (and
//! with `CI=true` as root, missing tools fail the test instead).
//!
//! Test files include this module with `#[path = "netlab/mod.rs"] mod
//! netlab;` (a plain `mod netlab;` is ambiguous next to `tests/netlab.rs`).
#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a started node may take to print its start line and publish
/// its API address.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one setup or CLI command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Host::stop`] waits for a node to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often [`wait_until`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The UDP port every node listens on for peers (each host has its own
/// namespace, so they can all use the default port).
pub const PEER_PORT: u16 = 34569;

/// The name of a host's interface (the router has `eth1` and `eth2`).
pub const HOST_INTERFACE: &str = "eth0";

/// Every lab's id starts with this.
const NAME_PREFIX: &str = "pl";

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Labs made by this process so far: part of each lab's unique id.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Serializes namespace creation and deletion (concurrent first uses of
/// `/run/netns` by `ip netns add` can race).
static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Whether lab tests can run here. When not, prints why to standard error
/// (`netlab: skipped (...)`) and returns false; the test then returns.
///
/// Needs root and the `ip` (iproute2), `nft` (nftables) and `ping`
/// (iputils-ping) commands, and the right to create network namespaces.
/// With `CI=true`, running as root without the tools (or without the right
/// to create namespaces) panics instead: CI is meant to run these tests.
pub fn supported() -> bool {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    let verdict = VERDICT.get_or_init(check_environment);
    match verdict {
        Ok(()) => true,
        Err(reason) => {
            let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
            if on_ci && effective_uid() == Some(0) {
                panic!("netlab: CI=true and running as root, but the lab cannot run: {reason} (install iproute2 nftables iputils-ping)");
            }
            // Under libtest the thread is named after the test.
            let test = std::thread::current().name().map(|name| format!("{name}: ")).unwrap_or_default();
            eprintln!("netlab: {test}skipped (needs root and iproute2/nftables/iputils-ping: {reason})");
            false
        }
    }
}

/// Why the lab cannot run here, if it cannot.
fn check_environment() -> Result<(), String> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => return Err(format!("running as uid {uid}, not root")),
        None => return Err("cannot read the user id from /proc/self/status".to_owned()),
    }
    let missing: Vec<&str> = [("ip", "-V"), ("nft", "--version"), ("ping", "-V")]
        .into_iter()
        .filter(|(tool, flag)| Command::new(tool).arg(flag).stdout(Stdio::null()).stderr(Stdio::null()).status().is_err())
        .map(|(tool, _)| tool)
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing commands: {}", missing.join(", ")));
    }
    // Root in an unprivileged container may still lack CAP_SYS_ADMIN.
    let probe = format!("{NAME_PREFIX}{:x}n{}-probe", std::process::id(), LAB_COUNTER.fetch_add(1, Ordering::SeqCst));
    let _guard = NETNS_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let added = Command::new("ip").args(["netns", "add", &probe]).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !added.status.success() {
        return Err(format!("cannot create a network namespace: {}", String::from_utf8_lossy(&added.stderr).trim()));
    }
    let _ = Command::new("ip").args(["netns", "delete", &probe]).output();
    Ok(())
}

/// Where libfaketime's multi-threaded library is (Debian's `faketime`
/// package), for a node whose wall clock should read differently: run it
/// with `LD_PRELOAD` set to this and `FAKETIME` to an offset (`+365d`).
/// When it is missing, prints why the test is skipped and returns `None`
/// (with `CI=true` as root it panics instead: install `faketime`).
pub fn libfaketime() -> Option<PathBuf> {
    const PLACES: [&str; 2] =
        ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"];
    if let Some(found) = PLACES.iter().map(PathBuf::from).find(|path| path.exists()) {
        return Some(found);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") && effective_uid() == Some(0) {
        panic!("netlab: CI=true and running as root, but libfaketime is missing (install faketime)");
    }
    let test = std::thread::current().name().map(|name| format!("{name}: ")).unwrap_or_default();
    eprintln!("netlab: {test}skipped (needs libfaketime: apt-get install faketime)");
    None
}

/// The effective user id of this process.
fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Waits until `probe` returns `Ok`, checking every [`POLL_INTERVAL`] for
/// at most `timeout`, and returns what it returned. `probe` returns
/// `Err(observation)` while the condition does not hold; at the deadline
/// this panics with `what` and the last observation.
pub fn wait_until<T>(timeout: Duration, what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        let observed = match probe() {
            Ok(value) => return value,
            Err(observed) => observed,
        };
        if started.elapsed() >= timeout {
            panic!("netlab: timed out after {timeout:?} waiting until {what}; last observed: {observed}");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The network namespaces of the lab with id `lab_id` ([`Lab::id`]) that
/// exist now.
pub fn live_namespaces(lab_id: &str) -> Vec<String> {
    let prefix = format!("{lab_id}-");
    all_namespaces().into_iter().filter(|name| name.starts_with(&prefix)).collect()
}

/// The names of all network namespaces (`ip netns list`).
fn all_namespaces() -> Vec<String> {
    let output = run_checked(Command::new("ip").args(["netns", "list"]));
    String::from_utf8_lossy(&output.stdout).lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

/// The command line of `command`, for messages.
fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `command` with no input, collecting its output; kills it and
/// panics if it runs longer than `timeout`.
fn run_with_deadline(command: &mut Command, timeout: Duration) -> Output {
    let description = describe(command);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = command.spawn().unwrap_or_else(|e| panic!("netlab: cannot run `{description}`: {e}"));
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => panic!("netlab: waiting for `{description}` failed: {err}"),
        Err(_) => {
            // The waiting thread has not reaped it, so the pid is still its.
            signal(pid, "KILL");
            panic!("netlab: `{description}` did not finish within {timeout:?}");
        }
    }
}

/// Runs `command` (with [`COMMAND_TIMEOUT`]) and panics with its standard
/// error unless it succeeds.
fn run_checked(command: &mut Command) -> Output {
    let output = run_with_deadline(command, COMMAND_TIMEOUT);
    if !output.status.success() {
        panic!(
            "netlab: `{}` failed ({}): {} {}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    output
}

/// Runs `ip ARGS`, panicking with its error unless it succeeds.
fn ip(args: &[&str]) {
    run_checked(Command::new("ip").args(args));
}

/// Sends signal `name` (`TERM`, `KILL`) to process `pid` with the shell's
/// `kill` (no dependency on procps).
fn signal(pid: u32, name: &str) -> bool {
    Command::new("sh").args(["-c", &format!("kill -{name} {pid}")]).status().is_ok_and(|s| s.success())
}

/// Deletes namespace `name` (retrying briefly); returns the last error.
fn delete_namespace(name: &str) -> Result<(), String> {
    let mut last_error = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(POLL_INTERVAL);
        }
        match Command::new("ip").args(["netns", "delete", name]).output() {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => last_error = String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            Err(err) => last_error = err.to_string(),
        }
    }
    Err(last_error)
}

/// Removes what labs of test processes that no longer exist left behind
/// (a test process killed by SIGKILL runs no destructor): their node
/// processes and namespaces. Runs once per process, before its first lab.
fn sweep_dead_runs() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        for name in all_namespaces() {
            let Some(pid) = lab_owner_pid(&name) else { continue };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if let Ok(output) = Command::new("ip").args(["netns", "pids", &name]).output() {
                for process in String::from_utf8_lossy(&output.stdout).split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                    signal(process, "KILL");
                }
            }
            match delete_namespace(&name) {
                Ok(()) => eprintln!("netlab: removed namespace {name} left by process {pid}, which no longer runs"),
                Err(err) => eprintln!("netlab: cannot remove namespace {name} left by process {pid}: {err}"),
            }
        }
    });
}

/// The pid of the test process that made the lab namespace `name`
/// (`pl<pid hex>n<counter>-<role>`), if the name is a lab's.
fn lab_owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (id, role) = rest.split_once('-')?;
    let (pid, counter) = id.split_once('n')?;
    let numbered = |prefix: char| role.strip_prefix(prefix).is_some_and(|i| i.parse::<u32>().is_ok());
    let known_role = role == "sw" || role == "r" || role == "probe" || numbered('h') || numbered('r');
    if !known_role || counter.parse::<u32>().is_err() {
        return None;
    }
    u32::from_str_radix(pid, 16).ok()
}

/// Whether labs keep their directory (logs, data) after the test:
/// `PLURESDB_NETLAB_KEEP=1`.
fn keep_lab_dirs() -> bool {
    std::env::var("PLURESDB_NETLAB_KEEP").is_ok_and(|v| v == "1")
}

/// The address of the host with `index` on LAN `lan` (1 or 2).
fn host_address(lan: u8, index: usize) -> Ipv4Addr {
    assert!(index < 240, "netlab: at most 240 hosts per LAN");
    Ipv4Addr::new(10, 77, lan, 10 + index as u8)
}

/// The public address of router `k` of [`Lab::nat`] (what the public
/// segment sees of its LAN's hosts).
pub fn nat_router_public_address(k: usize) -> Ipv4Addr {
    assert!(k < 50, "netlab: at most 50 NAT routers");
    Ipv4Addr::new(10, 77, 1, 200 + k as u8)
}

/// The router's address on LAN `lan`.
pub fn router_address(lan: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, lan, 1)
}

/// The nftables table of the switch: frames forwarded by its bridges go
/// through the base chain `partition` (priority 10; filled by
/// [`Lab::partition`]) and through one base chain `loss_<port>` per host
/// (priority 0; filled by [`Lab::set_loss`], added with the host).
const SWITCH_RULESET: &str = "\
table bridge lab {
  chain partition { type filter hook forward priority 10; policy accept; }
}
";

/// How a private LAN's router of [`Lab::nat`] treats traffic, as home and
/// office routers do. Every recipe masquerades the LAN behind the router's
/// public address, forwards from the LAN and answers (`ct state
/// established,related`) only, and drops everything else sent to the
/// router or through it from the public side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Endpoint-independent mapping (Linux keeps a flow's source port when
    /// it can): `masquerade`. Hole punching gets through.
    Cone,
    /// Endpoint-dependent mapping: `masquerade random` picks a new port
    /// for every flow, so the port a peer learned from the relay is not
    /// the one a hole punch comes from.
    Symmetric,
    /// [`Nat::Cone`], and forwarded UDP to the public side is dropped: only
    /// TCP (and WebSocket over it) leaves the LAN.
    UdpBlocked,
}

impl Nat {
    /// The router's nftables ruleset: `public` is its public interface,
    /// `lan` its LAN's.
    pub fn ruleset(self, public: &str, lan: &str) -> String {
        let masquerade = if self == Nat::Symmetric { "masquerade random" } else { "masquerade" };
        let udp = match self {
            Nat::UdpBlocked => format!("    iifname \"{lan}\" oifname \"{public}\" meta l4proto udp drop\n"),
            Nat::Cone | Nat::Symmetric => String::new(),
        };
        let mut out = String::new();
        out += "table ip nat {\n";
        out += "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n";
        out += &format!("    oifname \"{public}\" {masquerade}\n");
        out += "  }\n}\n";
        out += "table inet filter {\n";
        out += "  chain forward { type filter hook forward priority filter; policy drop;\n";
        out += &udp;
        out += "    ct state established,related accept\n";
        out += &format!("    iifname \"{lan}\" oifname \"{public}\" accept\n");
        out += "  }\n";
        out += "  chain input { type filter hook input priority filter; policy drop;\n";
        out += "    ct state established,related accept\n";
        out += "    iifname \"lo\" accept\n";
        out += &format!("    iifname \"{lan}\" accept\n");
        out += "  }\n}\n";
        out
    }
}

/// A set of namespaces forming one topology, with a host (and optionally a
/// node) in each host namespace. See the module documentation.
pub struct Lab {
    /// Unique per lab: the prefix of all its namespace names.
    id: String,
    /// Logs, data directories and nft scripts; removed on drop unless
    /// `PLURESDB_NETLAB_KEEP=1`.
    dir: tempfile::TempDir,
    /// Every namespace created so far, in creation order.
    namespaces: Vec<String>,
    /// The namespace holding the bridges.
    switch: String,
    /// The hosts, LAN 1 first.
    hosts: Vec<Host>,
    /// nft scripts written so far (to name the next one).
    scripts: AtomicU32,
}

impl Lab {
    /// `n` hosts on one bridge, host `i` at 10.77.1.(10+i)/24.
    pub fn lan(n: usize) -> Lab {
        let mut lab = Lab::empty();
        lab.add_bridge("br1");
        for index in 0..n {
            lab.add_host(1, index, None);
        }
        lab
    }

    /// Two LANs joined by a router: `a` hosts on 10.77.1.0/24 (lab hosts
    /// `0..a`, at .10, .11, ...) and `b` on 10.77.2.0/24 (lab hosts
    /// `a..a+b`, at .10, .11, ...). The router is .1 on each LAN and every
    /// host's default gateway; it forwards unicast IPv4 only.
    pub fn routed(a: usize, b: usize) -> Lab {
        let mut lab = Lab::empty();
        lab.add_bridge("br1");
        lab.add_bridge("br2");
        let router = lab.add_namespace("r");
        for lan in [1u8, 2] {
            let interface = format!("eth{lan}");
            lab.plug(&router, &interface, &format!("r{lan}"), &format!("br{lan}"));
            ip(&["-n", &router, "addr", "add", &format!("{}/24", router_address(lan)), "dev", &interface]);
        }
        // /proc/sys/net is the namespace's own for a process inside it.
        run_checked(Command::new("ip").args(["netns", "exec", &router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]));
        for index in 0..a {
            lab.add_host(1, index, Some(router_address(1)));
        }
        for index in 0..b {
            lab.add_host(2, index, Some(router_address(2)));
        }
        lab
    }

    /// The internet in small: `public` hosts on the public segment (LAN 1,
    /// 10.77.1.0/24: lab hosts `0..public`, at .10, .11, ...; relays), and
    /// for each entry `k` of `lans` a private LAN `k + 2`
    /// (10.77.(k+2).0/24) with `per_lan` hosts behind its own router
    /// (namespace `<id>-r<k>`, 10.77.1.(200+k) on the public segment and
    /// .1 on its LAN, every LAN host's gateway) doing NAT by `lans[k]`.
    /// Public hosts have no route to the private LANs: they see only the
    /// routers' addresses. Host numbers: the public ones first, then LAN
    /// 2's, LAN 3's, ...
    pub fn nat(public: usize, lans: &[Nat], per_lan: usize) -> Lab {
        assert!(lans.len() <= 50, "netlab: at most 50 private LANs");
        let mut lab = Lab::empty();
        lab.add_bridge("br1");
        for index in 0..public {
            lab.add_host(1, index, None);
        }
        for (k, nat) in lans.iter().enumerate() {
            let lan = k as u8 + 2;
            let bridge = format!("br{lan}");
            lab.add_bridge(&bridge);
            let router = lab.add_namespace(&format!("r{k}"));
            lab.plug(&router, "eth0", &format!("r{k}p"), "br1");
            lab.plug(&router, "eth1", &format!("r{k}l"), &bridge);
            ip(&["-n", &router, "addr", "add", &format!("{}/24", nat_router_public_address(k)), "dev", "eth0"]);
            ip(&["-n", &router, "addr", "add", &format!("{}/24", router_address(lan)), "dev", "eth1"]);
            run_checked(Command::new("ip").args(["netns", "exec", &router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]));
            lab.nft_in(&router, &nat.ruleset("eth0", "eth1"));
            for index in 0..per_lan {
                lab.add_host(lan, index, Some(router_address(lan)));
            }
        }
        lab
    }

    /// A lab with only its switch namespace; on a panic while the topology
    /// is built, dropping it removes what was made so far.
    fn empty() -> Lab {
        sweep_dead_runs();
        let id = format!("{NAME_PREFIX}{:x}n{}", std::process::id(), LAB_COUNTER.fetch_add(1, Ordering::SeqCst));
        let dir = tempfile::Builder::new()
            .prefix(&format!("netlab-{id}-"))
            .disable_cleanup(keep_lab_dirs())
            .tempdir()
            .expect("netlab: cannot create the lab's temp dir");
        let mut lab = Lab { id, dir, namespaces: Vec::new(), switch: String::new(), hosts: Vec::new(), scripts: AtomicU32::new(0) };
        lab.switch = lab.add_namespace("sw");
        lab.nft(SWITCH_RULESET);
        lab
    }

    /// Creates namespace `<id>-<role>` with `lo` up.
    fn add_namespace(&mut self, role: &str) -> String {
        let name = format!("{}-{role}", self.id);
        {
            let _guard = NETNS_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            ip(&["netns", "add", &name]);
        }
        self.namespaces.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// Creates bridge `name` in the switch namespace, flooding multicast.
    fn add_bridge(&self, name: &str) {
        ip(&["-n", &self.switch, "link", "add", name, "type", "bridge", "mcast_snooping", "0"]);
        ip(&["-n", &self.switch, "link", "set", name, "up"]);
    }

    /// Plugs namespace `namespace` into `bridge`: a veth pair made in the
    /// switch namespace (end `port` there, on the bridge) whose other end
    /// becomes `interface` in `namespace`. Both ends are set up.
    ///
    /// The namespace's end sends one datagram per frame (`gso_max_segs 1`),
    /// as a real NIC puts them on the wire: otherwise a UDP GSO batch of
    /// QUIC datagrams crosses the veth and the bridge as one frame, and the
    /// loss rules would drop whole batches.
    fn plug(&self, namespace: &str, interface: &str, port: &str, bridge: &str) {
        let sw = self.switch.as_str();
        ip(&["-n", sw, "link", "add", port, "type", "veth", "peer", "name", interface, "netns", namespace]);
        ip(&["-n", namespace, "link", "set", "dev", interface, "gso_max_segs", "1"]);
        ip(&["-n", sw, "link", "set", port, "master", bridge]);
        ip(&["-n", sw, "link", "set", port, "up"]);
        ip(&["-n", namespace, "link", "set", interface, "up"]);
    }

    /// Adds host number `self.hosts.len()` on LAN `lan` with address
    /// index `index` there, and a default route via `gateway` if given.
    fn add_host(&mut self, lan: u8, index: usize, gateway: Option<Ipv4Addr>) {
        let number = self.hosts.len();
        let name = format!("h{number}");
        let namespace = self.add_namespace(&name);
        let address = host_address(lan, index);
        let port = format!("h{number}");
        self.plug(&namespace, HOST_INTERFACE, &port, &format!("br{lan}"));
        ip(&["-n", &namespace, "addr", "add", &format!("{address}/24"), "dev", HOST_INTERFACE]);
        ip(&["-n", &namespace, "route", "add", "224.0.0.0/4", "dev", HOST_INTERFACE]);
        if let Some(gateway) = gateway {
            ip(&["-n", &namespace, "route", "add", "default", "via", &gateway.to_string()]);
        }
        let host = Host {
            name: name.clone(),
            namespace,
            address,
            lan,
            switch_port: port,
            data_dir: self.dir.path().join(format!("{name}-data")),
            log_path: self.dir.path().join(format!("{name}.log")),
            lab_dir: self.dir.path().to_owned(),
            node: None,
            started: None,
            starts: 0,
        };
        self.nft(&format!("add chain bridge lab loss_{} {{ type filter hook forward priority 0; policy accept; }}\n", host.switch_port));
        self.hosts.push(host);
    }

    /// Applies nft `script` in the switch namespace (atomically, `nft -f`).
    fn nft(&self, script: &str) {
        self.nft_in(&self.switch, script);
    }

    /// Applies nft `script` in `namespace` (atomically, `nft -f`).
    fn nft_in(&self, namespace: &str, script: &str) {
        let number = self.scripts.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("{namespace}-{number}.nft"));
        fs::write(&path, script).unwrap_or_else(|e| panic!("netlab: cannot write {}: {e}", path.display()));
        run_checked(Command::new("ip").args(["netns", "exec", namespace, "nft", "-f"]).arg(&path));
    }

    /// The lab's unique id: every one of its namespaces starts with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lab's directory (logs, data directories).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The names of the lab's namespaces.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The hosts, LAN 1 first.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `index`.
    pub fn host(&self, index: usize) -> &Host {
        self.hosts.get(index).unwrap_or_else(|| panic!("netlab: no host {index}: the lab has {}", self.hosts.len()))
    }

    /// Host `index`, to start or stop its node.
    pub fn host_mut(&mut self, index: usize) -> &mut Host {
        let count = self.hosts.len();
        self.hosts.get_mut(index).unwrap_or_else(|| panic!("netlab: no host {index}: the lab has {count}"))
    }

    /// Drops `percent` % of the frames in each direction of `host`'s link
    /// (nft `numgen random` rules on its switch port), replacing any loss
    /// set before; 0 clears it. Resets [`Lab::link_counters`].
    pub fn set_loss(&self, host: usize, percent: u8) {
        assert!(percent <= 100, "netlab: loss of {percent} %");
        let port = &self.host(host).switch_port;
        let chain = format!("bridge lab loss_{port}");
        let mut script = format!("flush chain {chain}\n");
        let sample = if percent == 100 { String::new() } else { format!("numgen random mod 100 < {percent} ") };
        if percent > 0 {
            // First count every frame, then drop the sample (counted too).
            script += &format!("add rule {chain} iifname \"{port}\" counter\n");
            script += &format!("add rule {chain} oifname \"{port}\" counter\n");
            script += &format!("add rule {chain} iifname \"{port}\" {sample}counter drop\n");
            script += &format!("add rule {chain} oifname \"{port}\" {sample}counter drop\n");
        }
        self.nft(&script);
    }

    /// Frames that crossed the switch on `host`'s link in either direction
    /// since [`Lab::set_loss`] set a loss, and how many of them it dropped:
    /// `(frames, dropped)`. Zeros when no loss is set.
    pub fn link_counters(&self, host: usize) -> (u64, u64) {
        let chain = format!("loss_{}", self.host(host).switch_port);
        let output =
            run_checked(Command::new("ip").args(["netns", "exec", &self.switch, "nft", "-j", "list", "chain", "bridge", "lab", &chain]));
        let listing: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("netlab: `nft -j list chain` printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)));
        let (mut frames, mut dropped) = (0, 0);
        for rule in listing["nftables"].as_array().into_iter().flatten().filter_map(|item| item["rule"]["expr"].as_array()) {
            let packets: u64 = rule.iter().filter_map(|expr| expr["counter"]["packets"].as_u64()).sum();
            if rule.iter().any(|expr| expr.get("drop").is_some()) {
                dropped += packets;
            } else {
                frames += packets;
            }
        }
        (frames, dropped)
    }

    /// Removes the packet loss on `host`'s link.
    pub fn clear_loss(&self, host: usize) {
        self.set_loss(host, 0);
    }

    /// Unplugs `host`'s cable at the switch (the switch's end of the link
    /// goes down; the host sees no carrier, its addresses and routes stay).
    pub fn cut(&self, host: usize) {
        ip(&["-n", &self.switch, "link", "set", &self.host(host).switch_port, "down"]);
    }

    /// Plugs `host`'s cable back in after [`Lab::cut`].
    pub fn restore(&self, host: usize) {
        ip(&["-n", &self.switch, "link", "set", &self.host(host).switch_port, "up"]);
    }

    /// Splits the hosts into `side_a` and `side_b`: the switch drops every
    /// IPv4 packet between a host of one side and a host of the other (nft
    /// rules on the hosts' addresses, in both directions). Hosts in neither
    /// keep talking to everyone. Replaces any partition set before;
    /// [`Lab::heal`] removes it.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) {
        if let Some(both) = side_a.iter().find(|h| side_b.contains(h)) {
            panic!("netlab: host {both} is on both sides of the partition");
        }
        let mut script = "flush chain bridge lab partition\n".to_owned();
        if !side_a.is_empty() && !side_b.is_empty() {
            let set = |side: &[usize]| side.iter().map(|&h| self.host(h).address.to_string()).collect::<Vec<_>>().join(", ");
            let (a, b) = (set(side_a), set(side_b));
            script += &format!("add rule bridge lab partition ip saddr {{ {a} }} ip daddr {{ {b} }} drop\n");
            script += &format!("add rule bridge lab partition ip saddr {{ {b} }} ip daddr {{ {a} }} drop\n");
        }
        self.nft(&script);
    }

    /// Removes the partition set by [`Lab::partition`].
    pub fn heal(&self) {
        self.nft("flush chain bridge lab partition\n");
    }

    /// [`wait_until`], for the lab's tests.
    pub fn wait_until<T>(&self, timeout: Duration, what: &str, probe: impl FnMut() -> Result<T, String>) -> T {
        wait_until(timeout, what, probe)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        for host in &mut self.hosts {
            host.terminate();
        }
        if failing {
            eprintln!("netlab: lab {} failed; node logs follow (lab dir {})", self.id, self.dir.path().display());
            for host in &self.hosts {
                eprintln!("----- {} ({}, {}) log tail -----\n{}", host.name, host.namespace, host.address, host.log_tail(LOG_TAIL_LINES));
            }
        }
        if keep_lab_dirs() {
            eprintln!("netlab: kept lab {}'s logs and data in {}", self.id, self.dir.path().display());
        }
        let _guard = NETNS_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Hosts and the router first: that removes the veths; then the
        // switch with its bridges.
        for name in self.namespaces.iter().rev() {
            if let Err(err) = delete_namespace(name) {
                eprintln!("netlab: cannot delete namespace {name}: {err}");
            }
        }
    }
}

/// One host of a [`Lab`]: a namespace with an address on a LAN, and the
/// node it may run.
pub struct Host {
    /// `h<i>`, its number in the lab.
    pub name: String,
    /// Its network namespace.
    pub namespace: String,
    /// Its address (on `eth0`).
    pub address: Ipv4Addr,
    /// Its LAN: 1 (10.77.1.0/24) or 2 (10.77.2.0/24).
    pub lan: u8,
    /// The switch's end of its cable.
    switch_port: String,
    /// The data directory of its node.
    pub data_dir: PathBuf,
    /// Its node's standard error (the node's log), across restarts.
    pub log_path: PathBuf,
    /// The lab's directory.
    lab_dir: PathBuf,
    /// The running node, if any.
    node: Option<Child>,
    /// The start line of the last node started.
    started: Option<Value>,
    /// Nodes started so far (to name their stdout files).
    starts: u32,
}

impl Host {
    /// A command running `program` inside the host's namespace, without the
    /// test's `PLURESDB_*` settings.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace]).arg(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PLURESDB_") {
                command.env_remove(key);
            }
        }
        command
    }

    /// Runs `program ARGS` in the host's namespace (with
    /// [`COMMAND_TIMEOUT`]) and returns its output, whatever its status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        run_with_deadline(self.command(program).args(args), COMMAND_TIMEOUT)
    }

    /// Whether one ping from this host to `address` is answered within 1 s.
    pub fn ping(&self, address: Ipv4Addr) -> bool {
        self.exec("ping", &["-c1", "-W1", &address.to_string()]).status.success()
    }

    /// Starts `pluresdb serve` on this host: API on 127.0.0.1 (inside the
    /// namespace), peers on the host's address, port [`PEER_PORT`], plus
    /// `extra` arguments (`--join TICKET`, ...). Returns the node's start
    /// line (`peer_id`, `api`, `listen`, ...) once the node also
    /// published its API address for the CLI. The node logs at `info` (or
    /// `PLURESDB_NETLAB_LOG`) to [`Host::log_path`].
    pub fn start(&mut self, extra: &[&str]) -> Value {
        self.start_with_env(&[], extra)
    }

    /// [`Host::start`] with `env` set for the node's process (for example
    /// libfaketime's `LD_PRELOAD` and `FAKETIME`, see [`libfaketime`]).
    pub fn start_with_env(&mut self, env: &[(&str, &str)], extra: &[&str]) -> Value {
        assert!(self.node.is_none(), "netlab: {} already runs a node", self.name);
        self.starts += 1;
        let stdout_path = self.lab_dir.join(format!("{}-start{}.stdout", self.name, self.starts));
        let stdout = fs::File::create(&stdout_path).unwrap_or_else(|e| panic!("netlab: cannot create {}: {e}", stdout_path.display()));
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("netlab: cannot open {}: {e}", self.log_path.display()));
        let port = PEER_PORT.to_string();
        let bind = self.address.to_string();
        let mut command = self.command(env!("CARGO_BIN_EXE_pluresdb"));
        command
            .arg("--json")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["serve", "--api-addr", "127.0.0.1:0", "--port", &port])
            .args(if extra.contains(&"--bind") { vec![] } else { vec!["--bind", bind.as_str()] })
            .args(extra)
            .env("PLURESDB_LOG", std::env::var("PLURESDB_NETLAB_LOG").unwrap_or_else(|_| "info".to_owned()))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied());
        let env_text: String = env.iter().map(|(key, value)| format!("{key}={value} ")).collect();
        let _ = writeln!(log, "===== netlab: {} start #{}: {env_text}{}", self.name, self.starts, describe(&command));
        let stderr = log.try_clone().unwrap_or_else(|e| panic!("netlab: cannot share {}: {e}", self.log_path.display()));
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        let child = command.spawn().unwrap_or_else(|e| panic!("netlab: cannot run `{}`: {e}", describe(&command)));
        self.node = Some(child);

        let what = format!("the node on {} prints its start line", self.name);
        let first_line = wait_until(START_TIMEOUT, &what, || {
            let text = fs::read_to_string(&stdout_path).unwrap_or_default();
            if let Some((line, _)) = text.split_once('\n') {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.node.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("netlab: the node on {} exited ({status}) before starting; its log:\n{}", self.name, self.log_tail(LOG_TAIL_LINES));
            }
            Err(format!("stdout so far: {text:?}"))
        });
        let started: Value = serde_json::from_str(&first_line)
            .unwrap_or_else(|e| panic!("netlab: the node on {} printed a start line that is not JSON ({e}): {first_line:?}", self.name));
        let api = started["api"].as_str().unwrap_or_default().trim_start_matches("http://").to_owned();
        let addr_file = self.data_dir.join("api.addr");
        // A killed node leaves its api.addr behind: wait for this node's.
        wait_until(START_TIMEOUT, &format!("the node on {} writes {}", self.name, addr_file.display()), || {
            let published = fs::read_to_string(&addr_file).unwrap_or_default();
            if published.trim() == api {
                Ok(())
            } else {
                Err(format!("{published:?} (the node announced {api})"))
            }
        });
        self.started = Some(started.clone());
        started
    }

    /// Whether a node started by [`Host::start`] has not been stopped or
    /// killed (it may have exited by itself).
    pub fn has_node(&self) -> bool {
        self.node.is_some()
    }

    /// The process id of the running node.
    pub fn node_pid(&self) -> Option<u32> {
        self.node.as_ref().map(Child::id)
    }

    /// The start line of the last node started here.
    pub fn started(&self) -> &Value {
        self.started.as_ref().unwrap_or_else(|| panic!("netlab: no node was started on {}", self.name))
    }

    /// A ticket to the running node's network (its network secret and its
    /// addresses on this host), from `pluresdb invite` (`serve` prints none).
    pub fn ticket(&self) -> String {
        let invite = self.cli_json(&["invite"]);
        invite["ticket"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("netlab: `pluresdb invite` on {} printed no ticket: {invite}", self.name))
    }

    /// The peer id of the last node started here.
    pub fn peer_id(&self) -> String {
        let started = self.started();
        started["peer_id"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("netlab: the node on {} printed no peer id: {started}", self.name))
    }

    /// Stops the node with SIGTERM and waits for it to exit (at most
    /// [`STOP_TIMEOUT`], then kills it and panics). Returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.node.take().unwrap_or_else(|| panic!("netlab: no node runs on {}", self.name));
        signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_INTERVAL),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("netlab: the node on {} did not stop within {STOP_TIMEOUT:?} of SIGTERM", self.name);
                }
                Err(err) => panic!("netlab: cannot wait for the node on {}: {err}", self.name),
            }
        }
    }

    /// Kills the node (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.node.take().unwrap_or_else(|| panic!("netlab: no node runs on {}", self.name));
        child.kill().unwrap_or_else(|e| panic!("netlab: cannot kill the node on {}: {e}", self.name));
        child.wait().unwrap_or_else(|e| panic!("netlab: cannot reap the node on {}: {e}", self.name));
    }

    /// Kills and reaps the node if one runs, ignoring errors (teardown).
    fn terminate(&mut self) {
        if let Some(mut child) = self.node.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        if self.starts == 0 {
            return "(no node was started on this host)".to_owned();
        }
        let text = fs::read_to_string(&self.log_path).unwrap_or_else(|e| format!("(cannot read the log: {e})"));
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs the CLI on this host's data directory (through its running
    /// node, if one runs) and returns its output, whatever its status.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = self.command(env!("CARGO_BIN_EXE_pluresdb"));
        command.arg("--data-dir").arg(&self.data_dir).args(args);
        run_with_deadline(&mut command, COMMAND_TIMEOUT)
    }

    /// Runs the CLI with `--json` and returns its output parsed; panics
    /// with its error unless it succeeds.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let output = self.cli(&full);
        if !output.status.success() {
            panic!(
                "netlab: `pluresdb {}` on {} failed ({}): {}",
                full.join(" "),
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let last = text.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("netlab: `pluresdb {}` on {} printed no JSON ({e}): {text:?}", full.join(" "), self.name))
    }

    /// Writes node `id` with `value` (a JSON object).
    pub fn put(&self, id: &str, value: &Value) {
        self.cli_json(&["put", id, &value.to_string()]);
    }

    /// The value of node `id`, or `None` if it does not exist.
    pub fn get(&self, id: &str) -> Option<Value> {
        let output = self.cli(&["--json", "get", id]);
        match output.status.code() {
            Some(0) => {
                let doc: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                    panic!("netlab: `get {id}` on {} printed no JSON ({e}): {}", self.name, String::from_utf8_lossy(&output.stdout))
                });
                Some(doc["value"].clone())
            }
            Some(3) => None,
            _ => {
                panic!("netlab: `get {id}` on {} failed ({}): {}", self.name, output.status, String::from_utf8_lossy(&output.stderr).trim())
            }
        }
    }

    /// The ids of all nodes (up to 1,000,000), in id order.
    pub fn list_ids(&self) -> Vec<String> {
        let doc = self.cli_json(&["list", "--limit", "1000000"]);
        doc["nodes"].as_array().into_iter().flatten().filter_map(|n| n["id"].as_str().map(str::to_owned)).collect()
    }

    /// Imports `nodes` (id, JSON object) through an NDJSON file; returns
    /// the number committed.
    pub fn import(&self, nodes: &[(String, Value)]) -> u64 {
        let text: String = nodes.iter().map(|(id, value)| format!("{}\n", serde_json::json!({"id": id, "value": value}))).collect();
        static IMPORTS: AtomicU32 = AtomicU32::new(0);
        let path = self.lab_dir.join(format!("{}-import-{}.ndjson", self.name, IMPORTS.fetch_add(1, Ordering::SeqCst)));
        fs::write(&path, text).unwrap_or_else(|e| panic!("netlab: cannot write {}: {e}", path.display()));
        let path_text = path.to_string_lossy().into_owned();
        self.cli_json(&["import", &path_text])["imported"].as_u64().unwrap_or(0)
    }

    /// `pluresdb peers`: `{"peers": [{"peer_id", "connected", ...}]}`.
    pub fn peers(&self) -> Value {
        self.cli_json(&["peers"])
    }

    /// The peer ids this node is connected to now.
    pub fn connected_peers(&self) -> Vec<String> {
        let doc = self.peers();
        doc["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["connected"] == true)
            .filter_map(|p| p["peer_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// `pluresdb status`: operations held, pending, traffic.
    pub fn status(&self) -> Value {
        self.cli_json(&["status"])
    }
}

/// The body of `GET path` from the API of `host`'s node (inside its
/// namespace, over bash's /dev/tcp: the lab needs no HTTP client).
pub fn api_get(lab: &Lab, host: usize, path: &str) -> String {
    let addr = std::fs::read_to_string(lab.host(host).data_dir.join("api.addr")).unwrap_or_default();
    let addr = addr.trim();
    let (ip, port) = addr.rsplit_once(':').unwrap_or_else(|| panic!("h{host}: no API address in api.addr: {addr:?}"));
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && printf 'GET {path} HTTP/1.0\\r\\nHost: {addr}\\r\\n\\r\\n' >&3 && cat <&3");
    let output = lab.host(host).exec("bash", &["-c", &script]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") => body.to_owned(),
        _ => panic!("h{host}: GET {path} failed: {text:?} {}", String::from_utf8_lossy(&output.stderr)),
    }
}
