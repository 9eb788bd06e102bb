//! The end-to-end VoIP site, shared by the end-to-end tests: a `pbx` namespace with voipwall,
//! Kamailio (registrar and proxy, digest authentication) and an RTP echo (SIPp's UAS with
//! `-rtp_echo`), joined through a bridge to `phone`, `carrier`, `admin` and `attacker`
//! namespaces ([`Site`]). SIPp is the phone's SIP user agent; the phone's audio is a 50 packets/s
//! RTP stream to the echo, so loss is measured both ways through the filter.

use std::time::{Duration, Instant};

use crate::{
    daemon::{Daemon, Env},
    site::{RtpCall, RtpStats, Site},
    voip::{Background, Kamailio, Sipp, asset},
};

pub const PASSWORD: &str = "s3cret";
/// Kamailio's ports: SIP, PortSIP SBC's SIP port, the carrier trunk.
pub const SIP_PORTS: [u16; 3] = [5060, 5066, 5080];

/// A pbx with voipwall, Kamailio and the echo. Fields drop in order: the SIP processes first,
/// then the daemon, its bpffs, and the namespaces last.
pub struct Pbx {
    pub echo: Vec<Background>,
    pub kamailio: Option<Kamailio>,
    pub d: Option<Daemon>,
    pub env: Env,
    pub site: Site,
}

pub fn admin_policy(site: &Site, roles: &[&str], extra: &str) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "roles = [{}]\n[sets]\nadmins = [\"{}/32\"]\n{extra}\n[[rule]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [\"22\"]\nfrom = [\"admins\"]\n",
        roles.join(", "),
        site.admin.ip()
    )
}

impl Pbx {
    /// voipwall with `policy` (None: the built-in default), and the SIP services unless
    /// `services` is false.
    pub fn start(policy: Option<String>, services: bool, media: u16) -> Self {
        Self::start_with_site(Site::new(), policy, services, media)
    }

    /// [`Pbx::start`] on a site made before (for a policy that names its addresses).
    pub fn start_with_site(site: Site, policy: Option<String>, services: bool, media: u16) -> Self {
        let env = Env::new();
        let mut args = vec!["--metrics".to_string(), "off".to_string()];
        if let Some(text) = &policy {
            let path = env.write("policy.toml", text);
            args.push("--policy".into());
            args.push(path.to_string_lossy().into_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = Daemon::start_on(&site.pbx.ns, &site.pbx.iface, &env, &args);
        let mut p = Self { echo: Vec::new(), kamailio: None, d: Some(d), env, site };
        if services {
            let (v4, v6) = (p.site.pbx.ip().to_string(), p.site.pbx.ip6().to_string());
            p.kamailio = Some(Kamailio::start_with(
                &p.site.pbx.ns,
                &p.env.root,
                &[&v4, &v6],
                &SIP_PORTS,
                PASSWORD,
                &format!("{v4}:5070"),
                &format!("[{v6}]:5072"),
            ));
            p.start_echo(media);
        }
        p
    }

    pub fn d(&self) -> &Daemon {
        self.d.as_ref().unwrap()
    }

    pub fn k(&self) -> &Kamailio {
        self.kamailio.as_ref().unwrap()
    }

    /// The RTP echo: a SIPp UAS per address family answering calls, echoing RTP on `media`
    /// (IPv4) and `media + 10` (IPv6).
    pub fn start_echo(&mut self, media: u16) {
        self.echo.clear();
        let (v4, v6) = (self.site.pbx.ip().to_string(), self.site.pbx.ip6().to_string());
        for (ip, sip, mp, name) in [(&v4, "5070", media, "echo4"), (&v6, "5072", media + 10, "echo6")] {
            let log = self.env.root.join(format!("{name}-{media}.log"));
            let mp = mp.to_string();
            self.echo.push(Sipp::spawn(
                &self.site.pbx.ns,
                &["-sn", "uas", "-i", ip, "-p", sip, "-mi", ip, "-mp", &mp, "-rtp_echo", "-m", "100"],
                Duration::from_secs(170),
                &log,
            ));
        }
        std::thread::sleep(Duration::from_millis(400));
    }

    /// `voipwall reload --policy` with `text`.
    pub fn reload(&self, text: &str) -> Duration {
        let path = self.env.write("reload.toml", text);
        let t = Instant::now();
        self.d().ok(&["reload", "--policy", path.to_str().unwrap()]);
        t.elapsed()
    }

    /// The phone registers (REGISTER, 401, REGISTER with credentials, 200) on `port`.
    pub fn register(&self, v6: bool, port: u16) {
        let (target, local) = self.endpoints(v6, port);
        let out = Sipp::run(
            &self.site.phone.ns,
            &[
                &target,
                "-sf",
                asset("register.xml").to_str().unwrap(),
                "-s",
                "100",
                "-au",
                "100",
                "-ap",
                PASSWORD,
                "-i",
                &local,
                "-p",
                "5062",
                "-m",
                "1",
                "-recv_timeout",
                "3000",
            ],
            Duration::from_secs(10),
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "the phone registers on {target}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    pub fn endpoints(&self, v6: bool, port: u16) -> (String, String) {
        if v6 {
            (format!("[{}]:{port}", self.site.pbx.ip6()), self.site.phone.ip6().to_string())
        } else {
            (format!("{}:{port}", self.site.pbx.ip()), self.site.phone.ip().to_string())
        }
    }

    /// Start a call from the phone (INVITE, 407, INVITE with credentials, 200, ACK, `secs` of
    /// talk, BYE) with its RTP to the echo; `during` runs while the call is up.
    pub fn call<F: FnOnce(&Pbx)>(&self, v6: bool, port: u16, media: u16, secs: u64, during: F) -> RtpStats {
        let (target, local) = self.endpoints(v6, port);
        let (rtp_local, rtp_remote) = if v6 {
            (format!("[{}]:20010", self.site.phone.ip6()), format!("[{}]:{}", self.site.pbx.ip6(), media + 10))
        } else {
            (format!("{}:20000", self.site.phone.ip()), format!("{}:{media}", self.site.pbx.ip()))
        };
        let call = asset("call.xml");
        let ms = (secs * 1000).to_string();
        std::thread::scope(|s| {
            let sipp = s.spawn(|| {
                Sipp::run(
                    &self.site.phone.ns,
                    &[
                        &target,
                        "-sf",
                        call.to_str().unwrap(),
                        "-s",
                        "100",
                        "-au",
                        "100",
                        "-ap",
                        PASSWORD,
                        "-i",
                        &local,
                        "-p",
                        "5064",
                        "-m",
                        "1",
                        "-d",
                        &ms,
                        "-recv_timeout",
                        "5000",
                    ],
                    Duration::from_secs(secs + 15),
                )
            });
            // The media starts as the call is answered.
            std::thread::sleep(Duration::from_millis(300));
            let rtp = RtpCall::start(&self.site.phone.ns, &rtp_local, &rtp_remote);
            during(self);
            let out = sipp.join().unwrap();
            let stats = rtp.finish();
            assert_eq!(
                out.status.code(),
                Some(0),
                "the call to {target} completes:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
            stats
        })
    }
}

#[track_caller]
pub fn assert_rtp(what: &str, s: &RtpStats, max_loss_pct: f64) {
    eprintln!("figure: {what}: RTP {} sent, {} echoed back, loss {:.2}%", s.sent, s.received, s.loss_pct());
    assert!(s.sent >= 100, "{what}: the call carried media ({s:?})");
    assert!(
        s.loss_pct() < max_loss_pct || (max_loss_pct == 0.0 && s.lost.is_empty()),
        "{what}: RTP loss {:.2}% (lost {:?})",
        s.loss_pct(),
        s.lost
    );
}
