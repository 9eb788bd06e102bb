//! The `voipwall` command line. Verbs, flags and exit codes are a contract that scripts rely on:
//! 0 ok, 1 runtime failure (daemon unreachable, kernel refused), 2 invalid input.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::{
    control::{self, Request},
    daemon::{self, RunArgs},
    dataplane::XdpModeChoice,
    detach,
    firewall::ListChange,
    paths,
    policy::{self, SshReach, roles},
    system,
};

#[derive(Parser, Debug)]
#[command(name = "voipwall", version, about = "Line-rate XDP firewall for VoIP servers")]
pub struct Cli {
    /// Interface whose daemon to talk to (default: the only one running).
    #[arg(long, global = true)]
    pub iface: Option<String>,
    /// Control socket path (default: /run/voipwall/IFACE.sock).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Log format of the daemon.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load, attach and enforce; foreground daemon (one per interface).
    Run(RunCmd),
    /// Add CIDRs to the block list.
    Block(AddCmd),
    /// Remove CIDRs from the block list (and lift bans inside them).
    Unblock(RemoveCmd),
    /// Add CIDRs to the allow list (bypasses every check).
    Allow(AddCmd),
    /// Remove CIDRs from the allow list.
    Disallow(RemoveCmd),
    /// Show blocked, allowed and banned sources, or the known peers (`list known`).
    List {
        #[arg(value_parser = ["blocked", "allowed", "banned", "known"])]
        which: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Packet and byte counters by verdict and reason, and per rule.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Sources by current packet rate.
    Top {
        #[arg(long)]
        json: bool,
        /// How many sources.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The verdict a packet from SOURCE would get now, step by step from the live maps: which
    /// list entry, ban, port rule, set, rate state and SIP checks apply. Without PROTO and PORT,
    /// for every open port range.
    Explain {
        /// An IPv4 or IPv6 address.
        source: std::net::IpAddr,
        /// udp or tcp (with PORT).
        #[arg(value_parser = ["udp", "tcp"], requires = "port")]
        proto: Option<String>,
        /// Destination port on this host.
        port: Option<u16>,
        #[arg(long)]
        json: bool,
    },
    /// Interface, XDP mode, policy, map fill.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check or show policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Re-read the policy and apply it atomically.
    Reload {
        /// Switch to another policy file.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Roll back unless `voipwall confirm` arrives within this time.
        #[arg(long, value_name = "DURATION")]
        confirm_within: Option<String>,
        /// Apply even if the policy closes SSH to everyone or cuts this session.
        #[arg(long)]
        allow_lockout: bool,
    },
    /// Keep the policy of a `reload --confirm-within`.
    Confirm,
    /// The fleet (CrowdSec Local API): sync state, decisions by origin, pushes.
    Fleet {
        #[command(subcommand)]
        command: FleetCmd,
    },
    /// Media pinholes of ports in pinhole mode: add one for signaling voipwall cannot read
    /// (TLS, WSS, SIP split over TCP segments), remove one, or list them.
    Pinhole {
        #[command(subcommand)]
        command: PinholeCmd,
    },
    /// List the built-in roles, or describe one.
    Roles { name: Option<String> },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Write the manual pages, voipwall(8) and one per verb, into DIR.
    Manpages { dir: PathBuf },
    /// Take voipwall off the interface when no daemon runs (after `--keep-attached`, a crash, or
    /// before removal): unpin its links, so its programs detach.
    Detach(DetachCmd),
}

#[derive(Args, Debug)]
pub struct DetachCmd {
    /// Also remove the interface's pinned maps (lists, bans, known peers, counters) and state.
    #[arg(long)]
    pub purge: bool,
    /// Stop the interface's running daemon first (SIGTERM, then wait for it to let go).
    #[arg(long)]
    pub stop: bool,
    /// Every interface with pins under --pin-dir instead of one --iface (what removing the
    /// package does).
    #[arg(long)]
    pub all: bool,
    /// Root of the pinned maps and links, as given to `run`.
    #[arg(long, default_value = paths::DEFAULT_PIN_ROOT)]
    pub pin_dir: PathBuf,
    /// State folder, as given to `run`.
    #[arg(long, default_value = paths::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Folder of the daemons' control sockets and locks (with --all).
    #[arg(long, default_value = paths::SOCKET_DIR)]
    pub run_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunCmd {
    /// Policy file (default: the embedded voip-edge policy).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[arg(long, default_value = paths::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Root of the pinned maps and links (one folder per interface below it).
    #[arg(long, default_value = paths::DEFAULT_PIN_ROOT)]
    pub pin_dir: PathBuf,
    /// Count what would be dropped, drop nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// On SIGTERM leave the program attached (it keeps filtering with the last state; `voipwall
    /// detach` takes it off).
    #[arg(long)]
    pub keep_attached: bool,
    /// Start even if the policy closes SSH to every source.
    #[arg(long)]
    pub allow_lockout: bool,
    /// Start even if a state file (lists, journal, fleet entries, bans, known peers) is
    /// unreadable: move it aside as `NAME.bad-UNIXTIME` and rebuild what it held from the
    /// pinned maps. Without it such a file stops the start and the pinned program keeps
    /// filtering.
    #[arg(long)]
    pub recover: bool,
    /// Prometheus listener, or `off`.
    #[arg(long, default_value = "127.0.0.1:9947")]
    pub metrics: String,
    /// Log a counter line this often (`0` = only the table at exit).
    #[arg(long, default_value = "60s")]
    pub stats_interval: String,
}

#[derive(Args, Debug)]
pub struct AddCmd {
    #[arg(required_unless_present = "file")]
    pub cidrs: Vec<String>,
    /// Read CIDRs from a file, one per line (`#` comments): bulk imports of feeds.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Remove the entry after this long (e.g. 30m, 1h, 7d).
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// Why: kept with the entry, shown by `voipwall list` and `voipwall explain`.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// `block`: block even a range holding this host's or your SSH client's address (`allow`
    /// cannot cut you off and ignores it).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct RemoveCmd {
    #[arg(required = true)]
    pub cidrs: Vec<String>,
    /// `disallow`: remove even if it cuts your SSH session (`unblock` cannot and ignores it).
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum FleetCmd {
    /// Last sync, errors by kind, decisions by origin, entries, pushes.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PinholeCmd {
    /// Admit UDP from PEER to LOCALPORT (a port in pinhole mode) until deleted or for --ttl.
    Add {
        /// The peer's IPv4 or IPv6 address.
        peer: std::net::IpAddr,
        /// The local media port.
        localport: u16,
        /// Close it after this long (e.g. "2h").
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Remove the pinhole of PEER on LOCALPORT.
    Del { peer: std::net::IpAddr, localport: u16 },
    /// Every pinhole: peer, local port, latched peer port, state, how it was opened, time left.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Validate a policy file (exit 2 if invalid); warns about a closed SSH port.
    Check { file: PathBuf },
    /// The policy the daemon enforces.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// Run the parsed command; returns the process exit code.
pub fn dispatch(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Run(_)) {
        // A CLI piped into `head` should end quietly, not panic on EPIPE. The daemon keeps
        // Rust's default (SIGPIPE ignored) so a vanished client never kills it.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let code = match cli.command {
        Command::Run(run) => match cli.iface {
            Some(iface) => run_daemon(iface, cli.socket, run),
            None => {
                eprintln!("error: voipwall run needs --iface IFACE");
                2
            }
        },
        Command::Roles { name } => roles_cmd(name.as_deref()),
        Command::Policy { command: PolicyCmd::Check { file } } => policy_check(&file),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "voipwall", &mut std::io::stdout());
            0
        }
        Command::Manpages { dir } => match manpages(&dir) {
            Ok(n) => {
                println!("wrote {n} manual pages to {}", dir.display());
                0
            }
            Err(e) => {
                eprintln!("error: {}: {e}", dir.display());
                1
            }
        },
        Command::Detach(d) => match (cli.iface, d.all) {
            (Some(_), true) => {
                eprintln!("error: voipwall detach takes --iface IFACE or --all, not both");
                2
            }
            (Some(iface), false) => detach_cmd(iface, cli.socket, &d),
            (None, true) => detach_all(&d),
            (None, false) => {
                eprintln!("error: voipwall detach needs --iface IFACE (or --all)");
                2
            }
        },
        command => client(cli.iface.as_deref(), cli.socket, command),
    };
    ExitCode::from(code as u8)
}

fn run_daemon(iface: String, socket: Option<PathBuf>, run: RunCmd) -> i32 {
    let metrics = match run.metrics.as_str() {
        "off" | "none" => None,
        s => match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                eprintln!("error: --metrics {s:?} is not ADDR:PORT or `off`");
                return 2;
            }
        },
    };
    let stats_interval = match policy::parse_duration(&run.stats_interval) {
        Ok(d) => d,
        Err(hint) => {
            eprintln!("error: --stats-interval {:?}: {hint}", run.stats_interval);
            return 2;
        }
    };
    let args = RunArgs {
        iface,
        policy: run.policy,
        state_dir: run.state_dir,
        pin_root: run.pin_dir,
        socket,
        dry_run: run.dry_run,
        xdp_mode: match run.xdp_mode {
            XdpModeArg::Auto => XdpModeChoice::Auto,
            XdpModeArg::Native => XdpModeChoice::Native,
            XdpModeArg::Generic => XdpModeChoice::Generic,
        },
        keep_attached: run.keep_attached,
        allow_lockout: run.allow_lockout,
        recover: run.recover,
        metrics,
        stats_interval,
    };
    match daemon::run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

/// voipwall(8) and voipwall-VERB(8) for every verb (and sub-verb), from the clap definitions.
fn manpages(dir: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut written = 0;
    // (the command, its page name `voipwall-policy-check`, how it is typed `voipwall policy check`)
    let mut pages = vec![(Cli::command(), "voipwall".to_string(), "voipwall".to_string())];
    while let Some((cmd, page, typed)) = pages.pop() {
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone().display_name(&page).bin_name(&typed)).section("8").render(&mut buf)?;
        std::fs::write(dir.join(format!("{page}.8")), buf)?;
        written += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            pages.push((sub.clone(), format!("{page}-{}", sub.get_name()), format!("{typed} {}", sub.get_name())));
        }
    }
    Ok(written)
}

/// `detach --all`: every interface with a pin folder under --pin-dir; the first failure does
/// not stop the others, and makes the exit code 1.
fn detach_all(d: &DetachCmd) -> i32 {
    let mut ifaces: Vec<String> = match std::fs::read_dir(&d.pin_dir) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| paths::decode_iface(&e.file_name().to_string_lossy()))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            eprintln!("error: listing {}: {e}", d.pin_dir.display());
            return 1;
        }
    };
    ifaces.sort();
    if ifaces.is_empty() {
        println!("nothing of voipwall under {}", d.pin_dir.display());
        return 0;
    }
    if let Err(e) = std::fs::create_dir_all(&d.run_dir) {
        eprintln!("error: creating {}: {e}", d.run_dir.display());
        return 1;
    }
    let mut code = 0;
    for iface in ifaces {
        let socket = d.run_dir.join(format!("{}.sock", paths::encode_iface(&iface)));
        code = code.max(detach_cmd(iface, Some(socket), d));
    }
    code
}

fn detach_cmd(iface: String, socket: Option<PathBuf>, d: &DetachCmd) -> i32 {
    let socket = socket.unwrap_or_else(|| paths::socket_path(&iface));
    let args = detach::DetachArgs {
        iface,
        socket,
        pin_root: d.pin_dir.clone(),
        state_root: d.state_dir.clone(),
        purge: d.purge,
        stop: d.stop,
    };
    match detach::detach(&args) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn roles_cmd(name: Option<&str>) -> i32 {
    match name {
        None => {
            for r in roles::ROLES {
                println!("{:<30} {}", r.name, r.summary);
            }
            0
        }
        Some(n) => match roles::find(n) {
            Some(r) => {
                print!("{}", roles::describe(r));
                0
            }
            None => {
                eprintln!("error: unknown role `{n}`; `voipwall roles` lists them");
                2
            }
        },
    }
}

fn policy_check(file: &std::path::Path) -> i32 {
    match policy::load(file) {
        Ok((p, c)) => {
            println!("{}: ok (sha256 {})", file.display(), p.sha256);
            println!("roles: {}", if p.roles.is_empty() { "-".to_string() } else { p.roles.join(", ") });
            println!("rules: {}", c.rule_names.len() - 1);
            for w in &c.warnings {
                println!("warning: {w}");
            }
            let ranges = |r: &[(u16, u16)]| {
                r.iter()
                    .map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if p.sip_ports.is_empty() {
                println!("note: no SIP ports: the SIP checks are off");
            } else {
                println!(
                    "note: SIP checks on {} (tcp+udp): User-Agent block list of {} pattern(s), failed-auth ban at {}, unanswered-challenge ban at {}, method limits: {}",
                    ranges(&p.sip_ports),
                    p.sip.ua_block.len(),
                    if p.sip.failed_auth.count == 0 { "off".to_string() } else { p.sip.failed_auth.count.to_string() },
                    if p.sip.unanswered_challenges.count == 0 {
                        "off".to_string()
                    } else {
                        p.sip.unanswered_challenges.count.to_string()
                    },
                    if p.sip.methods.is_empty() {
                        "none".to_string()
                    } else {
                        p.sip.methods.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                );
            }
            if !p.sip_encrypted_ports.is_empty() {
                println!(
                    "note: SIP over TLS/WSS on {}: encrypted, so only the packet-level checks apply there",
                    ranges(&p.sip_encrypted_ports)
                );
            }
            match &c.ssh {
                SshReach::Closed => println!(
                    "warning: SSH port {}/tcp is closed to every source: `voipwall run` and `reload` refuse this policy unless --allow-lockout",
                    c.ssh_port
                ),
                SshReach::AllowListOnly => {
                    println!("note: SSH port {}/tcp is reachable only from the allow list", c.ssh_port)
                }
                SshReach::Sets(s) => println!("note: SSH port {}/tcp is open to the sets {}", c.ssh_port, s.join(", ")),
                SshReach::Any => println!("note: SSH port {}/tcp is open to any source", c.ssh_port),
            }
            0
        }
        Err(e @ policy::PolicyError::Read { .. }) => {
            eprintln!("error: {e}");
            2
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// Find the daemon's socket: `--socket`, `--iface`, or the only socket there is.
fn socket_for(iface: Option<&str>, socket: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(s) = socket {
        return Ok(s);
    }
    if let Some(i) = iface {
        return Ok(paths::socket_path(i));
    }
    let found: Vec<PathBuf> = std::fs::read_dir(paths::SOCKET_DIR)
        .map(|d| {
            d.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "sock")).collect()
        })
        .unwrap_or_default();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => {
            Err(format!("no voipwall daemon found in {} (is `voipwall run --iface IFACE` running?)", paths::SOCKET_DIR))
        }
        _ => Err(format!("{} daemons are running; name one with --iface", found.len())),
    }
}

fn client(iface: Option<&str>, socket: Option<PathBuf>, command: Command) -> i32 {
    let ssh_client = system::ssh_client_from_env();
    let (req, json) = match command {
        Command::Block(a) => (
            Request::Block(ListChange {
                file: absolute(a.file),
                ..change(a.cidrs, a.ttl, a.reason, a.force, ssh_client)
            }),
            false,
        ),
        Command::Allow(a) => (
            Request::Allow(ListChange {
                file: absolute(a.file),
                ..change(a.cidrs, a.ttl, a.reason, a.force, ssh_client)
            }),
            false,
        ),
        Command::Unblock(r) => (Request::Unblock(change(r.cidrs, None, None, r.force, ssh_client)), false),
        Command::Disallow(r) => (Request::Disallow(change(r.cidrs, None, None, r.force, ssh_client)), false),
        Command::List { which, json } => (Request::List { which }, json),
        Command::Stats { json } => (Request::Stats, json),
        Command::Top { json, limit } => (Request::Top { limit }, json),
        Command::Status { json } => (Request::Status, json),
        Command::Explain { source, proto, port, json } => {
            (Request::Explain { source: source.to_string(), proto, port }, json)
        }
        Command::Fleet { command: FleetCmd::Status { json } } => (Request::FleetStatus, json),
        Command::Pinhole { command: PinholeCmd::Add { peer, localport, ttl } } => {
            (Request::PinholeAdd { peer: peer.to_string(), local_port: localport, ttl }, false)
        }
        Command::Pinhole { command: PinholeCmd::Del { peer, localport } } => {
            (Request::PinholeDel { peer: peer.to_string(), local_port: localport }, false)
        }
        Command::Pinhole { command: PinholeCmd::List { json } } => (Request::PinholeList, json),
        Command::Policy { command: PolicyCmd::Show { json } } => (Request::PolicyShow, json),
        Command::Reload { policy, confirm_within, allow_lockout } => {
            let policy = absolute(policy);
            (Request::Reload { policy, confirm_within, allow_lockout, ssh_client }, false)
        }
        Command::Confirm => (Request::Confirm, false),
        Command::Run(_)
        | Command::Roles { .. }
        | Command::Detach(_)
        | Command::Completions { .. }
        | Command::Manpages { .. }
        | Command::Policy { command: PolicyCmd::Check { .. } } => {
            unreachable!("handled locally")
        }
    };
    let socket = match socket_for(iface, socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    match control::call(&socket, &req, Duration::from_secs(60)) {
        Ok(resp) => {
            if resp.ok {
                if json {
                    println!("{}", serde_json::to_string_pretty(&resp.data).expect("serializable"));
                } else {
                    print!("{}", resp.text);
                    if !resp.text.ends_with('\n') {
                        println!();
                    }
                }
            } else {
                eprintln!("error: {}", resp.error.as_deref().unwrap_or("unknown"));
            }
            resp.exit_code()
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn change(
    cidrs: Vec<String>,
    ttl: Option<String>,
    reason: Option<String>,
    force: bool,
    ssh_client: Option<std::net::IpAddr>,
) -> ListChange {
    ListChange { cidrs, file: None, ttl, reason, force, ssh_client }
}

/// The daemon reads files itself: hand it an absolute path.
fn absolute(p: Option<PathBuf>) -> Option<PathBuf> {
    p.map(|p| std::path::absolute(&p).unwrap_or(p))
}
