//! The control socket: one JSON request line, one JSON response line, over a root-only Unix
//! socket (`/run/voipwall/IFACE.sock`, mode 0600, peers checked with SO_PEERCRED).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tracing::{debug, warn};

use crate::{
    firewall::{Firewall, ListChange, OpError, ReloadRequest, Reply},
    sources::ListKind,
};

/// A request from the CLI.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Block(ListChange),
    Unblock(ListChange),
    Allow(ListChange),
    Disallow(ListChange),
    List {
        which: Option<String>,
    },
    Stats,
    Top {
        limit: usize,
    },
    Status,
    PolicyShow,
    Reload {
        policy: Option<PathBuf>,
        confirm_within: Option<String>,
        #[serde(default)]
        allow_lockout: bool,
        ssh_client: Option<IpAddr>,
    },
    Confirm,
    FleetStatus,
    PinholeAdd {
        peer: String,
        local_port: u16,
        ttl: Option<String>,
    },
    PinholeDel {
        peer: String,
        local_port: u16,
    },
    PinholeList,
    /// `voipwall explain SOURCE [PROTO PORT]`: `proto` is "udp" or "tcp".
    Explain {
        source: String,
        proto: Option<String>,
        port: Option<u16>,
    },
}

/// Whether a failure was the caller's input or the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Invalid,
    Runtime,
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    pub text: String,
    pub data: Value,
}

impl Response {
    fn from_result(r: Result<Reply, OpError>) -> Self {
        match r {
            Ok(reply) => Self { ok: true, error_kind: None, error: None, text: reply.text, data: reply.data },
            Err(e) => Self {
                ok: false,
                error_kind: Some(if e.is_invalid_input() { ErrorKind::Invalid } else { ErrorKind::Runtime }),
                error: Some(e.to_string()),
                text: String::new(),
                data: Value::Null,
            },
        }
    }

    /// A failure that is the daemon's, not the request's (exit 1).
    fn runtime(message: String) -> Self {
        Self {
            ok: false,
            error_kind: Some(ErrorKind::Runtime),
            error: Some(message),
            text: String::new(),
            data: Value::Null,
        }
    }

    /// A request the daemon could not read (exit 2).
    fn invalid(message: String) -> Self {
        Self {
            ok: false,
            error_kind: Some(ErrorKind::Invalid),
            error: Some(message),
            text: String::new(),
            data: Value::Null,
        }
    }

    /// The answer as sent: one JSON line.
    fn line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_else(|_| br#"{"ok":false}"#.to_vec());
        out.push(b'\n');
        out
    }

    /// CLI exit code: 0 ok, 1 runtime failure, 2 invalid input.
    pub fn exit_code(&self) -> i32 {
        match (self.ok, self.error_kind) {
            (true, _) => 0,
            (false, Some(ErrorKind::Invalid)) => 2,
            _ => 1,
        }
    }
}

/// Check an explain request's arguments (they may come from any client), then explain.
fn explain(fw: &Firewall, source: &str, proto: Option<&str>, port: Option<u16>) -> Result<Reply, OpError> {
    let addr: std::net::IpAddr = source.parse().map_err(|_| {
        OpError::Invalid(format!("{source:?} is not an IPv4 or IPv6 address (explain takes one source)"))
    })?;
    let target = match (proto, port) {
        (None, None) => None,
        (Some("udp"), Some(p)) => Some((common::PROTO_SLOT_UDP, p)),
        (Some("tcp"), Some(p)) => Some((common::PROTO_SLOT_TCP, p)),
        (Some(other), Some(_)) => return Err(OpError::Invalid(format!("protocol {other:?} is not udp or tcp"))),
        _ => return Err(OpError::Invalid("give both PROTO and PORT, or neither".into())),
    };
    fw.explain(addr, target)
}

/// Execute one request against the fw.
pub fn handle(fw: &mut Firewall, req: Request, who: &str) -> Response {
    let r = match req {
        Request::Block(c) => fw.add(ListKind::Block, &c, who),
        Request::Allow(c) => fw.add(ListKind::Allow, &c, who),
        Request::Unblock(c) => fw.remove(ListKind::Block, &c, who),
        Request::Disallow(c) => fw.remove(ListKind::Allow, &c, who),
        Request::List { which } => fw.list(which.as_deref()),
        Request::Stats => fw.stats(),
        Request::Top { limit } => fw.top(limit.max(1)),
        Request::Status => fw.status(),
        Request::FleetStatus => Ok(fw.fleet_status()),
        Request::PinholeAdd { peer, local_port, ttl } => {
            match (peer.parse::<IpAddr>(), ttl.as_deref().map(crate::policy::parse_duration).transpose()) {
                (Err(_), _) => Err(OpError::Invalid(format!("`{peer}` is not an IP address"))),
                (_, Err(hint)) => Err(OpError::Invalid(format!("--ttl is not a duration; {hint}"))),
                (_, Ok(Some(d))) if d.is_zero() => Err(OpError::Invalid("--ttl must be longer than zero".into())),
                (Ok(peer), Ok(ttl)) => fw.pinhole_add(peer, local_port, ttl),
            }
        }
        Request::PinholeDel { peer, local_port } => match peer.parse::<IpAddr>() {
            Ok(peer) => fw.pinhole_del(peer, local_port),
            Err(_) => Err(OpError::Invalid(format!("`{peer}` is not an IP address"))),
        },
        Request::PinholeList => fw.pinhole_list(),
        Request::Explain { source, proto, port } => explain(fw, &source, proto.as_deref(), port),
        Request::PolicyShow => Ok(fw.policy_show()),
        Request::Reload { policy, confirm_within, allow_lockout, ssh_client } => {
            match confirm_within.as_deref().map(crate::policy::parse_duration).transpose() {
                Ok(Some(d)) if d.is_zero() => Err(OpError::Invalid("--confirm-within must be longer than zero".into())),
                Ok(confirm_within) => {
                    fw.reload(ReloadRequest { path: policy, confirm_within, allow_lockout, caller: ssh_client })
                }
                Err(hint) => Err(OpError::Invalid(format!("--confirm-within is not a duration; {hint}"))),
            }
        }
        Request::Confirm => fw.confirm(),
    };
    Response::from_result(r)
}

/// Bind the socket: a private directory, stale sockets replaced, mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        // A live daemon holds the interface lock, so a socket here is a dead one's leftover.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Clients served at once. Each holds at most [`MAX_REQUEST`] bytes while its request line
/// arrives, so the socket's buffers stay under `MAX_CLIENTS * MAX_REQUEST` whatever clients do;
/// a client beyond the limit is answered "busy" at once and closed.
pub const MAX_CLIENTS: usize = 64;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;

/// Time a client has to send its whole request line.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// Time a client has to read its answer (a million-entry `list` is tens of megabytes).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// Serve requests until `shutdown` flips.
pub async fn serve(listener: UnixListener, fw: Arc<Mutex<Firewall>>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let mut log = crate::ratelog::RateLog::new(1, Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // No await: a busy daemon spends nothing more on this client.
                        let answer = Response::runtime(format!(
                            "busy: {MAX_CLIENTS} control requests are in progress; try again"
                        ));
                        let _ = stream.try_write(&answer.line());
                        if let Some(suppressed) = log.allow("busy") {
                            warn!(clients = MAX_CLIENTS, suppressed, "control socket busy: a client was turned away");
                        }
                        continue;
                    };
                    let fw = fw.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(stream, fw).await {
                            debug!(error = %e, "control connection");
                        }
                        drop(slot);
                    });
                }
                Err(e) => {
                    if let Some(suppressed) = log.allow("accept") {
                        warn!(error = %e, suppressed, "control socket accept failed");
                    }
                    // Out of descriptors, most likely: let some close before trying again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Why a request line could not be read.
enum ReadError {
    TooLong,
    TooSlow,
    Io(std::io::Error),
}

/// Read one newline-terminated request into a `BytesMut`: at most [`MAX_REQUEST`] bytes, within
/// [`CLIENT_DEADLINE`].
async fn read_request(read: &mut UnixStream) -> Result<BytesMut, ReadError> {
    let mut buf = BytesMut::with_capacity(4096);
    let deadline = tokio::time::Instant::now() + CLIENT_DEADLINE;
    let mut searched = 0;
    loop {
        if let Some(pos) = buf[searched..].iter().position(|&b| b == b'\n') {
            return Ok(buf.split_to(searched + pos));
        }
        searched = buf.len();
        if buf.len() >= MAX_REQUEST {
            return Err(ReadError::TooLong);
        }
        // Never read past the limit: the buffer grows to MAX_REQUEST and no further.
        buf.reserve((MAX_REQUEST - buf.len()).min(64 * 1024));
        let room = MAX_REQUEST - buf.len();
        let mut limited = (&mut *read).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(&mut buf)).await {
            Err(_) => return Err(ReadError::TooSlow),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(0)) => return Ok(buf),
            Ok(Ok(_)) => {}
        }
    }
}

async fn connection(mut stream: UnixStream, fw: Arc<Mutex<Firewall>>) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let response = if cred.uid() != 0 {
        // Checked before reading anything: the socket's mode already keeps others out.
        Response::runtime("the control socket is for root only".into())
    } else {
        match read_request(&mut stream).await {
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::TooLong) => {
                Response::invalid(format!("request longer than {MAX_REQUEST} bytes without a line end"))
            }
            Err(ReadError::TooSlow) => {
                Response::invalid(format!("no complete request line within {} s", CLIENT_DEADLINE.as_secs()))
            }
            Ok(line) => match serde_json::from_slice::<Request>(&line) {
                Ok(req) => {
                    let who = format!("uid {} pid {}", cred.uid(), cred.pid().unwrap_or(0));
                    // Reloads write up to a few hundred thousand map entries: keep them off the
                    // async workers.
                    tokio::task::spawn_blocking(move || {
                        let mut fw = fw.lock().unwrap_or_else(|p| p.into_inner());
                        handle(&mut fw, req, &who)
                    })
                    .await
                    .unwrap_or_else(|e| Response::runtime(format!("request handler failed: {e}")))
                }
                Err(e) => Response::invalid(format!("malformed request: {e}")),
            },
        }
    };
    let out = response.line();
    // A client that does not read its answer does not hold a slot for long.
    match tokio::time::timeout(ANSWER_DEADLINE, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client did not read its answer")),
    }
}

/// The CLI side: send one request, wait for the answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, String> {
    let mut stream = StdUnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the voipwall daemon at {}: {e} (is `voipwall run` running for this interface?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| format!("sending to {}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    serde_json::from_str(&answer).map_err(|e| format!("malformed answer from the daemon: {e}"))
}
