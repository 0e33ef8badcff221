//! The address grammar of targets and upstreams.
//!
//! target `match`: `ip:port`, `[v6]:port`, `cidr:port`, `[v6cidr]:port`, `hostname:port` or
//! `local:port`, where port may be a range `8000-8002`. `local` is a reserved word, not a
//! hostname: every address of this host (loopback, the unspecified address, and the addresses
//! of its interfaces, kept current by the agent). upstream: `ip:port`, `[v6]:port` or
//! `hostname:port`.
use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    ops::RangeInclusive,
};

use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    Net(IpNet),
    Name(String),
    /// Every address of this host: loopback, the unspecified address (which the hooks look
    /// up as the address it becomes) and the host's interface addresses as they change.
    Local,
}

/// The `match` host word for [`HostSpec::Local`].
pub const LOCAL: &str = "local";

/// Which destinations a target covers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TargetMatch {
    pub host: HostSpec,
    pub ports: RangeInclusive<u16>,
}

/// A place to forward to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Endpoint {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

/// Ranges longer than this are almost certainly a typo, and each port is one map entry.
const MAX_PORTS_PER_TARGET: usize = 64;

impl TryFrom<String> for TargetMatch {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (host, port) = split_host_port(&s)?;
        let ports = parse_ports(port).map_err(|e| format!("{s:?}: {e}"))?;
        let host = if host == LOCAL {
            HostSpec::Local
        } else if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            HostSpec::Net(parse_net(inner, true).map_err(|e| format!("{s:?}: {e}"))?)
        } else if host.contains('/') || host.parse::<IpAddr>().is_ok() {
            let net = parse_net(host, false).map_err(|e| format!("{s:?}: {e}"))?;
            if net.addr().is_ipv6() {
                return Err(format!(
                    "{s:?}: IPv6 addresses go in brackets, e.g. \"[::1]:8000\""
                ));
            }
            HostSpec::Net(net)
        } else {
            check_hostname(host).map_err(|e| format!("{s:?}: {e}"))?;
            HostSpec::Name(host.to_string())
        };
        Ok(TargetMatch { host, ports })
    }
}

impl TryFrom<String> for Endpoint {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Endpoint::Addr(addr));
        }
        let (host, port) = split_host_port(&s)?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: expected a port number after ':'"))?;
        if host.starts_with('[') {
            return Err(format!("{s:?}: expected \"[ipv6]:port\""));
        }
        check_hostname(host).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Endpoint::Name {
            host: host.to_string(),
            port,
        })
    }
}

fn split_host_port(s: &str) -> Result<(&str, &str), String> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.is_empty() => Ok((h, p)),
        _ => Err(format!(
            "{s:?}: expected \"host:port\", e.g. \"127.0.0.1:8000\", \"[::1]:8000\", \"10.0.0.0/8:8000\" or \"models.internal:443\""
        )),
    }
}

fn parse_ports(p: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = match p.split_once('-') {
        Some((lo, hi)) => (lo, hi),
        None => (p, p),
    };
    let lo: u16 = lo
        .parse()
        .map_err(|_| format!("expected a port or port range, found {p:?}"))?;
    let hi: u16 = hi
        .parse()
        .map_err(|_| format!("expected a port or port range, found {p:?}"))?;
    if lo == 0 || hi < lo {
        return Err(format!("port range {p:?} is empty or starts at 0"));
    }
    if usize::from(hi - lo) >= MAX_PORTS_PER_TARGET {
        return Err(format!(
            "port range {p:?} spans more than {MAX_PORTS_PER_TARGET} ports"
        ));
    }
    Ok(lo..=hi)
}

fn parse_net(s: &str, want_v6: bool) -> Result<IpNet, String> {
    let net = if s.contains('/') {
        let net: IpNet = s
            .parse()
            .map_err(|_| format!("expected an address or CIDR, found {s:?}"))?;
        if net.trunc() != net {
            return Err(format!(
                "{s} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        net
    } else {
        let ip: IpAddr = s
            .parse()
            .map_err(|_| format!("expected an address, found {s:?}"))?;
        IpNet::from(ip)
    };
    if want_v6 && !net.addr().is_ipv6() {
        return Err("brackets are for IPv6 addresses".into());
    }
    Ok(net)
}

fn check_hostname(h: &str) -> Result<(), String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not an IP address, CIDR or hostname"))
    }
}

/// The loopback networks a `local` target covers without asking the host.
pub const LOOPBACK_NETS: [IpNet; 2] = [
    IpNet::V4(match ipnet::Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8) {
        Ok(n) => n,
        Err(_) => panic!("127.0.0.0/8"),
    }),
    IpNet::V6(match ipnet::Ipv6Net::new(Ipv6Addr::LOCALHOST, 128) {
        Ok(n) => n,
        Err(_) => panic!("::1/128"),
    }),
];

impl TargetMatch {
    /// Whether `addr` is one of the destinations this target intercepts (static nets only:
    /// hostnames are checked after resolution, interface addresses by the agent).
    pub fn covers(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.ports.contains(&addr.port())
            && (self.static_nets().iter().any(|n| n.contains(&ip))
                || (self.host == HostSpec::Local && ip.is_unspecified()))
    }

    /// The networks known from the config alone; hostnames and interface addresses are
    /// added by the agent as it learns them.
    pub fn static_nets(&self) -> Vec<IpNet> {
        match &self.host {
            HostSpec::Net(net) => vec![*net],
            HostSpec::Name(_) => Vec::new(),
            HostSpec::Local => LOOPBACK_NETS.to_vec(),
        }
    }
}

/// How many entries (one per network and port; shared ones once) the config's own networks
/// take in the kernel's target map. Hostname answers and interface addresses come on top.
pub fn static_entry_count<'a>(matches: impl IntoIterator<Item = &'a TargetMatch>) -> usize {
    let mut seen = BTreeSet::new();
    for m in matches {
        for net in m.static_nets() {
            for port in m.ports.clone() {
                seen.insert((net, port));
            }
        }
    }
    seen.len()
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl fmt::Display for TargetMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostSpec::Net(IpNet::V6(n)) if n.prefix_len() == 128 => write!(f, "[{}]", n.addr())?,
            HostSpec::Net(IpNet::V6(n)) => write!(f, "[{n}]")?,
            HostSpec::Net(IpNet::V4(n)) if n.prefix_len() == 32 => write!(f, "{}", n.addr())?,
            HostSpec::Net(n) => write!(f, "{n}")?,
            HostSpec::Name(h) => f.write_str(h)?,
            HostSpec::Local => f.write_str(LOCAL)?,
        }
        if self.ports.start() == self.ports.end() {
            write!(f, ":{}", self.ports.start())
        } else {
            write!(f, ":{}-{}", self.ports.start(), self.ports.end())
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Addr(a) => write!(f, "{a}"),
            Endpoint::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}
