//! Scenario files: TOML in, a typed [`Scenario`] out, or every error of the file at once.
//!
//! The reference of every field is `docs/scenario.md`; `sim validate` runs [`Scenario::parse`].

mod reader;
mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path as FsPath;
use std::time::Duration;

use reports::CallKind;
use toml::de::{DeTable, DeValue};

pub use reader::ScenarioError;

/// Parses a duration as scenario files write it (`"500ms"`, `"1.5s"`, `"10m"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    units::duration(s)
}
use reader::{Source, Table, Value, closest, integer_value};

pub use crate::anchor::recording::Sides;
use crate::netem::{
    Jitter, JitterDistribution, Loss, Path, QueueLimit, Schedule, Segment, SegmentModel,
};
use crate::profiles;

/// A parsed, checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The scenario's name (`run.name`, else the file's stem).
    pub name: String,
    /// The seed of every random choice (impairments, call mix).
    pub seed: u64,
    /// Error-rate threshold, a fraction (0.02 for the vendor's 2 %).
    pub threshold: f64,
    /// Confidence of the error rate's interval.
    pub confidence: f64,
    /// The agents and their calls.
    pub agents: Agents,
    /// The TURN server the agents are given.
    pub turn: Turn,
    /// The signalling endpoint.
    pub signalling_url: String,
    /// The sites, each with its share of the agents and its path.
    pub sites: Vec<Site>,
    /// The sides of each call the anchor records (`[recording]`), or none.
    pub recording: Option<Sides>,
    /// Faults at set times (`[[fault]]`), in the file's order.
    pub faults: Vec<Fault>,
}

/// Who calls, how many, how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct Agents {
    /// Call attempts in total.
    pub calls: u32,
    /// Calls up at once, at most.
    pub concurrency: u32,
    /// New calls per second, at most.
    pub ramp_per_second: f64,
    /// How long a connected call talks.
    pub call_duration: Duration,
    /// Call kinds and their shares (summing to 1).
    pub mix: BTreeMap<CallKind, f64>,
    /// The codec.
    pub codec: Codec,
    /// Session timeouts (DESIGN §4).
    pub timeouts: Timeouts,
    /// No RTP for this long drops the call (`media_timeout`).
    pub dead_air: Duration,
}

/// The codec of the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus, 48 kHz clock, 20 ms frames.
    Opus,
    /// G.711 µ-law, 8 kHz, 20 ms frames.
    G711,
}

/// Session timeouts, defaulting to the CCP's (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Signalling WebSocket connect, retries included (10 s).
    pub websocket_connect: Duration,
    /// ICE candidate collection (8 s).
    pub ice_collection: Duration,
    /// `invite` → answer (5 s).
    pub invite_answer: Duration,
    /// `accept` and `bye` acknowledgement (2 s).
    pub ack: Duration,
    /// The signalling keep-alive while talking: a ping this often, its pong awaited as long
    /// (10 s).
    pub keepalive: Duration,
}

impl Timeouts {
    /// The CCP's defaults.
    pub const CCP: Self = Self {
        websocket_connect: Duration::from_secs(10),
        ice_collection: Duration::from_secs(8),
        invite_answer: Duration::from_secs(5),
        ack: Duration::from_secs(2),
        keepalive: Duration::from_secs(10),
    };
}

/// The TURN server as the agents are told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Its URLs, in the order the agent tries them.
    pub urls: Vec<TurnUrl>,
    /// How many TURN servers the names resolve to (a load balancer's addresses, each a node
    /// of its own); each lookup answers one, in turn, among those still answered.
    pub nodes: u8,
}

/// Something that goes wrong at a set time in the run (`[[fault]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// When, from the run's start.
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
}

/// What a [`Fault`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// A TURN node (index from 0) fails: it answers nothing and relays nothing from then on,
    /// and the DNS stops answering its address `dns_removed_after` later (a load balancer's
    /// health check). `reset_streams` closes its TCP/TLS connections (a crashed host's RSTs);
    /// without it they hang open (a hung process).
    TurnNodeDown {
        /// Which node.
        node: u8,
        /// Whether its TCP/TLS connections are reset.
        reset_streams: bool,
        /// The delay before the DNS stops answering it.
        dns_removed_after: Duration,
    },
}

pub use loadgen::turn_url::{Transport, TurnUrl};

/// A site: a share of the agents behind one network path and policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    /// Its name.
    pub name: String,
    /// Fraction of the agents at this site.
    pub share: f64,
    /// The names of the path's elements as written (profiles or segments), for reports.
    pub profile: String,
    /// The path, agent side first.
    pub path: Path,
    /// What the site's network refuses.
    pub policy: Policy,
}

/// What a site's network refuses: firewall rules, DNS, proxies.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Policy {
    /// Traffic dropped by protocol and server port (e.g. UDP 3478).
    pub block: Vec<PortRule>,
    /// Host name patterns (`*` matches any run of characters) the site's DNS will not resolve.
    pub unresolvable: Vec<String>,
    /// A stateless firewall: inbound UDP is dropped unless its destination port (the agent's) is
    /// in one of these ranges. `None`: a stateful firewall (replies are let in).
    pub inbound_udp_allow: Option<Vec<RangeInclusive<u16>>>,
    /// A proxy that breaks WebSocket upgrades (the signalling connection fails).
    pub breaks_websocket_upgrade: bool,
    /// A TLS-inspecting proxy whose certificate cache expires this long after the run starts:
    /// TLS connections open then are reset.
    pub tls_cache_expiry: Option<Duration>,
    /// A proxy that lets the signalling WebSocket's upgrade through, then stops relaying it
    /// this long after it opened, silently: no FIN, no RST (an idle-timeout middlebox that
    /// drops state without telling either end).
    pub stalls_websocket_after: Option<Duration>,
}

/// A blocked protocol, optionally only on some server ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// The protocol.
    pub transport: Transport,
    /// The server ports; `None` for all.
    pub ports: Option<RangeInclusive<u16>>,
}

impl Policy {
    /// What the site's TLS-inspecting proxy does (nothing, when it has none:
    /// [`crate::inspection::InspectionPolicy::inspects`]).
    pub fn inspection(&self) -> crate::inspection::InspectionPolicy {
        crate::inspection::InspectionPolicy {
            breaks_websocket_upgrade: self.breaks_websocket_upgrade,
            cache_expiry: self.tls_cache_expiry,
            stalls_after: self.stalls_websocket_after,
        }
    }

    /// Whether traffic to `server_port` over `transport` is blocked.
    pub fn blocks(&self, transport: Transport, server_port: u16) -> bool {
        self.block.iter().any(|r| {
            r.transport == transport && r.ports.as_ref().is_none_or(|p| p.contains(&server_port))
        })
    }

    /// Whether the site's DNS resolves `host`.
    pub fn resolves(&self, host: &str) -> bool {
        !self.unresolvable.iter().any(|pattern| glob(pattern, host))
    }

    /// Whether inbound UDP to the agent's `port` passes the firewall.
    pub fn admits_inbound_udp(&self, port: u16) -> bool {
        self.inbound_udp_allow
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|r| r.contains(&port)))
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(s),
        Some((head, tail)) => {
            // `get`: the head's length may fall inside a multi-byte character of `s`.
            s.get(..head.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(head))
                && (0..=s.len() - head.len())
                    .any(|i| s.is_char_boundary(head.len() + i) && glob(tail, &s[head.len() + i..]))
        }
    }
}

/// Every error of a scenario file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

impl Scenario {
    /// Reads and parses a scenario file.
    pub fn load(path: &FsPath) -> Result<Self, ScenarioErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ScenarioErrors(vec![ScenarioError {
                line: 0,
                column: 0,
                file: file.clone(),
                field: String::new(),
                message: e.to_string(),
            }])
        })?;
        let stem = path.file_stem().map_or_else(
            || "scenario".to_owned(),
            |s| s.to_string_lossy().into_owned(),
        );
        Self::parse(&file, &stem, &text)
    }

    /// Parses scenario text; `file` names it in errors, `default_name` is used when the file
    /// sets no `run.name`.
    pub fn parse(file: &str, default_name: &str, text: &str) -> Result<Self, ScenarioErrors> {
        let mut src = Source::new(file, text);
        let (doc, syntax) = DeTable::parse_recoverable(text);
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            src.error(span, "", format!("TOML syntax: {}", e.message()));
        }
        let scenario = if src.errors.is_empty() {
            read_scenario(&mut src, &doc, default_name)
        } else {
            None
        };
        let mut errors = src.errors;
        errors.sort();
        errors.dedup();
        match scenario {
            Some(s) if errors.is_empty() => Ok(s),
            _ => Err(ScenarioErrors(errors)),
        }
    }
}

fn read_scenario(
    src: &mut Source<'_>,
    doc: &toml::Spanned<DeTable<'_>>,
    default_name: &str,
) -> Option<Scenario> {
    let mut top = Table::new(doc.get_ref(), doc.span(), "");

    let mut name = default_name.to_owned();
    let mut seed = None;
    let mut threshold = 0.02;
    let mut confidence = 0.95;
    match top.get("run") {
        Some(v) => {
            if let Some(mut run) = Table::from_value(src, v, "run") {
                if let Some((n, _)) = run.string(src, "name") {
                    name = n;
                }
                seed = run.integer(src, "seed", 0..=i64::MAX).map(|s| s as u64);
                if seed.is_none() && run.get("seed").is_none() {
                    run.missing(src, "seed", "every scenario names its seed, e.g. seed = 42");
                }
                if let Some(t) = run.parsed(src, "threshold", units::percent) {
                    threshold = t;
                }
                if let Some(c) = run.number(src, "confidence", 0.5..=0.9999) {
                    confidence = c;
                }
                run.finish(src);
            }
        }
        None => top.missing(src, "run", "a [run] table with at least `seed`"),
    }

    let agents = match top.get("agents") {
        Some(v) => Table::from_value(src, v, "agents").and_then(|t| read_agents(src, t)),
        None => {
            top.missing(src, "agents", "an [agents] table with at least `calls`");
            None
        }
    };

    let turn = match top.get("turn") {
        Some(v) => Table::from_value(src, v, "turn").and_then(|t| read_turn(src, t)),
        None => {
            top.missing(src, "turn", "a [turn] table naming the TURN server, e.g. urls = [\"turn:turn.sim.local:3478?transport=udp\"]");
            None
        }
    };

    let mut signalling_url = "wss://signalling.sim.local:8443/".to_owned();
    if let Some(v) = top.get("signalling")
        && let Some(mut t) = Table::from_value(src, v, "signalling")
    {
        if let Some((url, span)) = t.string(src, "url") {
            // The same check `sim run` and `loadgen` make: what validates, runs.
            match loadgen::signalling::host_port(&url) {
                Ok(_) => signalling_url = url,
                Err(e) => src.error(span, "signalling.url", e),
            }
        }
        t.finish(src);
    }

    let mut recording = None;
    if let Some(v) = top.get("recording")
        && let Some(mut t) = Table::from_value(src, v, "recording")
    {
        match t.string(src, "record") {
            Some((r, span)) => match r.as_str() {
                "agent" => recording = Some(Sides::Agent),
                "customer" => recording = Some(Sides::Customer),
                "both" => recording = Some(Sides::Both),
                other => src.error(
                    span,
                    "recording.record",
                    format!(
                        "unknown side \"{other}\"; expected \"agent\", \"customer\" or \"both\""
                    ),
                ),
            },
            None if t.get("record").is_none() => t.missing(
                src,
                "record",
                "which sides to record: record = \"agent\", \"customer\" or \"both\"",
            ),
            None => {}
        }
        t.finish(src);
    }

    let faults = match (top.get("fault"), &turn) {
        (Some(v), Some(turn)) => read_faults(src, v, turn),
        (Some(_), None) | (None, _) => Some(Vec::new()),
    };

    let segments = match top.get("segment") {
        Some(v) => Table::from_value(src, v, "segment")
            .map(|t| read_segments(src, &t))
            .unwrap_or_default(),
        None => BTreeMap::new(),
    };

    let common_policy = match top.get("policy") {
        Some(v) => {
            Table::from_value(src, v, "policy").map(|t| read_policy(src, t, Policy::default()))
        }
        None => Some(Policy::default()),
    };

    let sites = match top.get("site") {
        Some(v) => read_sites(
            src,
            v,
            &segments,
            &common_policy.clone().unwrap_or_default(),
        ),
        None => {
            top.missing(src, "site", "at least one [[site]] with a `path`");
            None
        }
    };
    top.finish(src);

    Some(Scenario {
        name,
        seed: seed?,
        threshold,
        confidence,
        agents: agents?,
        turn: turn?,
        signalling_url,
        sites: sites?,
        recording,
        faults: faults?,
    })
}

fn read_faults(src: &mut Source<'_>, v: &Value<'_>, turn: &Turn) -> Option<Vec<Fault>> {
    let DeValue::Array(items) = v.get_ref() else {
        src.error(v.span(), "fault", "expected [[fault]] tables");
        return None;
    };
    let mut faults = Vec::new();
    let mut complete = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("fault[{i}]");
        let Some(mut t) = Table::from_value(src, item, &p) else {
            complete = false;
            continue;
        };
        let at = t.duration(src, "at", Duration::ZERO, Duration::from_secs(24 * 3600));
        if at.is_none() && t.get("at").is_none() {
            t.missing(
                src,
                "at",
                "when the fault happens, from the run's start, e.g. at = \"40s\"",
            );
        }
        let kind = match t.string(src, "kind") {
            Some((k, _)) if k == "turn_node_down" => {
                let nodes = i64::from(turn.nodes);
                let node = t.integer(src, "node", 1..=nodes);
                if node.is_none() && t.get("node").is_none() {
                    t.missing(
                        src,
                        "node",
                        &format!("which TURN node fails, 1 to {nodes} (turn.nodes)"),
                    );
                }
                let reset_streams = t.boolean(src, "reset_streams").unwrap_or(true);
                let dns_removed_after = t
                    .duration(
                        src,
                        "dns_removed_after",
                        Duration::ZERO,
                        Duration::from_secs(3600),
                    )
                    .unwrap_or(Duration::ZERO);
                node.map(|n| FaultKind::TurnNodeDown {
                    node: (n - 1) as u8,
                    reset_streams,
                    dns_removed_after,
                })
            }
            Some((other, span)) => {
                src.error(
                    span,
                    &t.path("kind"),
                    format!("unknown fault \"{other}\"; expected \"turn_node_down\""),
                );
                None
            }
            None => {
                if t.get("kind").is_none() {
                    t.missing(src, "kind", "what fails, e.g. kind = \"turn_node_down\"");
                }
                None
            }
        };
        t.finish(src);
        match (at, kind) {
            (Some(at), Some(kind)) => faults.push(Fault { at, kind }),
            _ => complete = false,
        }
    }
    complete.then_some(faults)
}

fn read_agents(src: &mut Source<'_>, mut t: Table<'_, '_>) -> Option<Agents> {
    let calls = t.integer(src, "calls", 1..=1_000_000);
    if calls.is_none() && t.get("calls").is_none() {
        t.missing(
            src,
            "calls",
            "the number of call attempts, e.g. calls = 200",
        );
    }
    let concurrency = t.integer(src, "concurrency", 1..=100_000);
    let ramp = t.parsed(src, "ramp", units::per_second);
    let call_duration = t.duration(
        src,
        "call_duration",
        Duration::from_secs(1),
        Duration::from_secs(4 * 3600),
    );
    let dead_air = t.duration(
        src,
        "dead_air",
        Duration::from_millis(500),
        Duration::from_secs(600),
    );
    let codec = match t.string(src, "codec") {
        None => Codec::Opus,
        Some((c, span)) => match c.as_str() {
            "opus" => Codec::Opus,
            "g711" | "pcmu" => Codec::G711,
            other => {
                src.error(
                    span,
                    &t.path("codec"),
                    format!("unknown codec \"{other}\"; expected \"opus\" or \"g711\""),
                );
                Codec::Opus
            }
        },
    };
    let mut mix = BTreeMap::from([(CallKind::Inbound, 1.0)]);
    if let Some(v) = t.get("mix")
        && let Some(mut m) = Table::from_value(src, v, t.path("mix"))
    {
        mix.clear();
        for kind in CallKind::ALL {
            if let Some(share) = m.number(src, kind.as_str(), 0.0..=1.0) {
                mix.insert(kind, share);
            }
        }
        let total: f64 = mix.values().sum();
        if (total - 1.0).abs() > 1e-6 {
            src.error(
                m.span(),
                &t.path("mix"),
                format!("the shares must add up to 1, they add up to {total}"),
            );
        }
        m.finish(src);
    }
    let mut timeouts = Timeouts::CCP;
    if let Some(v) = t.get("timeouts")
        && let Some(mut tt) = Table::from_value(src, v, t.path("timeouts"))
    {
        let (min, max) = (Duration::from_millis(10), Duration::from_secs(300));
        if let Some(d) = tt.duration(src, "websocket_connect", min, max) {
            timeouts.websocket_connect = d;
        }
        if let Some(d) = tt.duration(src, "ice_collection", min, max) {
            timeouts.ice_collection = d;
        }
        if let Some(d) = tt.duration(src, "invite_answer", min, max) {
            timeouts.invite_answer = d;
        }
        if let Some(d) = tt.duration(src, "ack", min, max) {
            timeouts.ack = d;
        }
        if let Some(d) = tt.duration(src, "keepalive", Duration::from_secs(1), max) {
            timeouts.keepalive = d;
        }
        tt.finish(src);
    }
    let span = t.span();
    t.finish(src);
    let calls = calls? as u32;
    let concurrency = concurrency.map_or(calls.min(50), |c| c as u32);
    if concurrency > calls {
        src.error(
            span,
            "agents.concurrency",
            format!("concurrency ({concurrency}) cannot exceed calls ({calls})"),
        );
    }
    Some(Agents {
        calls,
        concurrency,
        ramp_per_second: ramp.unwrap_or(10.0),
        call_duration: call_duration.unwrap_or(Duration::from_secs(20)),
        mix,
        codec,
        timeouts,
        dead_air: dead_air.unwrap_or(Duration::from_secs(5)),
    })
}

fn read_turn(src: &mut Source<'_>, mut t: Table<'_, '_>) -> Option<Turn> {
    let path = t.path("urls");
    let urls = match t.get("urls") {
        None => {
            t.missing(src, "urls", "the TURN URLs the agents are given, e.g. [\"turn:turn.sim.local:3478?transport=udp\"]");
            None
        }
        Some(v) => match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                let mut urls = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => match TurnUrl::parse(s) {
                            Ok(u) => urls.push(u),
                            Err(e) => src.error(item.span(), &format!("{path}[{i}]"), e),
                        },
                        other => src.error(
                            item.span(),
                            &format!("{path}[{i}]"),
                            format!("expected a TURN URL string, found {}", other.type_str()),
                        ),
                    }
                }
                (urls.len() == items.len()).then_some(urls)
            }
            _ => {
                src.error(v.span(), &path, "expected a non-empty array of TURN URLs");
                None
            }
        },
    };
    let nodes = t.integer(src, "nodes", 1..=8).unwrap_or(1) as u8;
    t.finish(src);
    Some(Turn { urls: urls?, nodes })
}

fn read_segments(src: &mut Source<'_>, t: &Table<'_, '_>) -> BTreeMap<String, Segment> {
    let mut out = BTreeMap::new();
    for (name, v) in t.entries() {
        let path = t.path(&name);
        let Some(mut st) = Table::from_value(src, v, &path) else {
            continue;
        };
        let mut base = Segment {
            name: name.clone(),
            up: SegmentModel::new(),
            down: SegmentModel::new(),
            shared: false,
        };
        if let Some((p, span)) = st.string(src, "profile") {
            match profiles::by_name(&p) {
                Some(prof) if prof.segments.len() == 1 => {
                    base = prof.segments[0].clone();
                    base.name = name.clone();
                }
                Some(prof) => src.error(
                    span,
                    &st.path("profile"),
                    format!("profile `{p}` has {} segments; a segment can start only from a one-segment profile", prof.segments.len()),
                ),
                None => src.error(span, &st.path("profile"), unknown_profile(&p, &[])),
            }
        }
        if let Some(shared) = st.boolean(src, "shared") {
            base.shared = shared;
        }
        let both = read_model_fields(src, &mut st);
        let mut up = both.apply(base.up.clone());
        let mut down = both.apply(base.down.clone());
        for (key, model) in [("up", &mut up), ("down", &mut down)] {
            if let Some(v) = st.get(key)
                && let Some(mut dt) = Table::from_value(src, v, st.path(key))
            {
                *model = read_model_fields(src, &mut dt).apply(model.clone());
                dt.finish(src);
            }
        }
        st.finish(src);
        out.insert(
            name.clone(),
            Segment {
                name,
                up,
                down,
                shared: base.shared,
            },
        );
    }
    // Every key was a segment name: nothing unknown at this level.
    out
}

/// The model fields present in a table, to apply over a base model.
#[derive(Default)]
struct ModelFields {
    delay: Option<Duration>,
    jitter: Option<Jitter>,
    reorder: Option<bool>,
    loss: Option<Loss>,
    duplicate: Option<f64>,
    corrupt: Option<f64>,
    rate: Option<u64>,
    queue: Option<QueueLimit>,
    mtu: Option<u32>,
    overhead: Option<u32>,
    outages: Option<Vec<Schedule>>,
    stalls: Option<Vec<Schedule>>,
}

impl ModelFields {
    fn apply(&self, mut m: SegmentModel) -> SegmentModel {
        if let Some(d) = self.delay {
            m.delay = d;
        }
        if let Some(j) = self.jitter {
            m.jitter = Some(j);
        }
        if let Some(r) = self.reorder {
            m.reorder = r;
        }
        if let Some(l) = self.loss {
            m.loss = l;
        }
        if let Some(d) = self.duplicate {
            m.duplicate = d;
        }
        if let Some(c) = self.corrupt {
            m.corrupt = c;
        }
        if self.rate.is_some() || self.queue.is_some() {
            let bits = self.rate.or(m.rate.map(|r| r.bits_per_second));
            let queue = self
                .queue
                .or(m.rate.map(|r| r.queue))
                .unwrap_or(QueueLimit::Packets(1000));
            m.rate = bits.map(|b| crate::netem::Rate {
                bits_per_second: b,
                queue,
            });
        }
        if let Some(mtu) = self.mtu {
            m.mtu = Some(mtu);
        }
        if let Some(o) = self.overhead {
            m.overhead = o;
        }
        if let Some(o) = &self.outages {
            m.outages.clone_from(o);
        }
        if let Some(s) = &self.stalls {
            m.stalls.clone_from(s);
        }
        m
    }
}

fn read_model_fields(src: &mut Source<'_>, t: &mut Table<'_, '_>) -> ModelFields {
    let day = Duration::from_secs(86_400);
    let mut f = ModelFields {
        delay: t.duration(src, "delay", Duration::ZERO, Duration::from_secs(10)),
        reorder: t.boolean(src, "reorder"),
        duplicate: t.parsed(src, "duplicate", units::percent),
        corrupt: t.parsed(src, "corrupt", units::percent),
        rate: t.parsed(src, "rate", units::bit_rate),
        mtu: t.integer(src, "mtu", 68..=65_535).map(|m| m as u32),
        overhead: t.integer(src, "overhead", 0..=1_000).map(|o| o as u32),
        ..ModelFields::default()
    };
    if let Some(v) = t.get("jitter") {
        let path = t.path("jitter");
        f.jitter = read_jitter(src, v, &path);
    }
    if let Some(v) = t.get("loss") {
        let path = t.path("loss");
        f.loss = read_loss(src, v, &path);
    }
    if let Some(v) = t.get("queue") {
        let path = t.path("queue");
        f.queue = match v.get_ref() {
            DeValue::Integer(_) => {
                integer_value(src, v, &path, 1..=1_000_000).map(|n| QueueLimit::Packets(n as u32))
            }
            DeValue::String(s) => match units::duration(s) {
                Ok(d) if d > Duration::ZERO && d <= Duration::from_secs(10) => {
                    Some(QueueLimit::Time(d))
                }
                Ok(_) => {
                    src.error(
                        v.span(),
                        &path,
                        "a queue time must be above 0 and at most 10 s",
                    );
                    None
                }
                Err(e) => {
                    src.error(v.span(), &path, e);
                    None
                }
            },
            other => {
                src.error(
                    v.span(),
                    &path,
                    format!(
                        "expected packets (an integer) or a time (\"50ms\"), found {}",
                        other.type_str()
                    ),
                );
                None
            }
        };
        if f.rate.is_none() && t.get("rate").is_none() {
            src.error(v.span(), &path, "a queue needs a `rate` to drain it");
        }
    }
    for key in ["outages", "stalls"] {
        let key: &'static str = key;
        if let Some(v) = t.get(key) {
            let path = t.path(key);
            let schedules = read_schedules(src, v, &path, day);
            if key == "outages" {
                f.outages = schedules;
            } else {
                f.stalls = schedules;
            }
        }
    }
    f
}

fn read_jitter(src: &mut Source<'_>, v: &Value<'_>, path: &str) -> Option<Jitter> {
    let max = Duration::from_secs(5);
    match v.get_ref() {
        DeValue::String(s) => match units::duration(s) {
            Ok(amount) if amount <= max => Some(Jitter {
                amount,
                distribution: JitterDistribution::Normal,
                correlation: 0.0,
            }),
            Ok(_) => {
                src.error(v.span(), path, "jitter must be at most 5 s");
                None
            }
            Err(e) => {
                src.error(v.span(), path, e);
                None
            }
        },
        DeValue::Table(_) => {
            let mut t = Table::from_value(src, v, path)?;
            let amount = t.duration(src, "amount", Duration::ZERO, max);
            if amount.is_none() && t.get("amount").is_none() {
                t.missing(
                    src,
                    "amount",
                    "the jitter's standard deviation, e.g. amount = \"20ms\"",
                );
            }
            let distribution = match t.string(src, "distribution") {
                None => Some(JitterDistribution::Normal),
                Some((d, span)) => {
                    let found = JitterDistribution::ALL
                        .into_iter()
                        .find(|x| x.as_str() == d);
                    if found.is_none() {
                        src.error(span, &t.path("distribution"), format!("unknown distribution \"{d}\"; expected uniform, normal, pareto or paretonormal"));
                    }
                    found
                }
            };
            let correlation = t.number(src, "correlation", 0.0..=0.99).unwrap_or(0.0);
            t.finish(src);
            Some(Jitter {
                amount: amount?,
                distribution: distribution?,
                correlation,
            })
        }
        other => {
            src.error(v.span(), path, format!("expected a duration (\"20ms\") or a table {{ amount, distribution, correlation }}, found {}", other.type_str()));
            None
        }
    }
}

fn read_loss(src: &mut Source<'_>, v: &Value<'_>, path: &str) -> Option<Loss> {
    match v.get_ref() {
        DeValue::String(s) => match units::percent(s) {
            Ok(p) => Some(if p == 0.0 {
                Loss::None
            } else {
                Loss::Random(p)
            }),
            Err(e) => {
                src.error(v.span(), path, e);
                None
            }
        },
        DeValue::Table(_) => {
            let mut t = Table::from_value(src, v, path)?;
            let mut loss = None;
            if let Some(p) = t.parsed(src, "random", units::percent) {
                loss = Some(Loss::Random(p));
            }
            if let Some(gv) = t.get("gilbert_elliott")
                && let Some(mut g) = Table::from_value(src, gv, t.path("gilbert_elliott"))
            {
                let p = g.parsed(src, "p", units::percent);
                let r = g.parsed(src, "r", units::percent);
                for (key, found) in [("p", p), ("r", r)] {
                    if found.is_none() && g.get(key).is_none() {
                        g.missing(src, key, "a percentage, e.g. \"1%\"");
                    }
                }
                let loss_in_bad = g.parsed(src, "loss_in_bad", units::percent).unwrap_or(1.0);
                let loss_in_good = g.parsed(src, "loss_in_good", units::percent).unwrap_or(0.0);
                g.finish(src);
                if let (Some(p), Some(r)) = (p, r) {
                    loss = Some(Loss::GilbertElliott {
                        p,
                        r,
                        loss_in_bad,
                        loss_in_good,
                    });
                }
            }
            if let Some(bv) = t.get("bursts")
                && let Some(mut b) = Table::from_value(src, bv, t.path("bursts"))
            {
                let rate = b.parsed(src, "rate", units::percent);
                let mean = b.number(src, "mean_length", 1.0..=1000.0);
                b.finish(src);
                match (rate, mean) {
                    (Some(rate), Some(mean)) if rate < 1.0 => {
                        loss = Some(profiles::gilbert(rate, mean));
                    }
                    (Some(_), Some(_)) => {
                        src.error(bv.span(), path, "a burst loss rate must be below 100%");
                    }
                    _ => src.error(
                        bv.span(),
                        path,
                        "bursts needs `rate` (\"1%\") and `mean_length` (packets)",
                    ),
                }
            }
            t.finish(src);
            if loss.is_none() {
                src.error(
                    v.span(),
                    path,
                    "expected one of `random`, `gilbert_elliott` or `bursts`",
                );
            }
            loss
        }
        other => {
            src.error(
                v.span(),
                path,
                format!(
                    "expected a percentage (\"1%\") or a table, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

fn read_schedules(
    src: &mut Source<'_>,
    v: &Value<'_>,
    path: &str,
    max: Duration,
) -> Option<Vec<Schedule>> {
    let DeValue::Array(items) = v.get_ref() else {
        src.error(
            v.span(),
            path,
            format!(
                "expected an array of {{ every, duration }} or {{ at, duration }} tables, found {}",
                v.get_ref().type_str()
            ),
        );
        return None;
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(mut t) = Table::from_value(src, item, &p) else {
            continue;
        };
        let duration = t.duration(src, "duration", Duration::from_millis(1), max);
        if duration.is_none() && t.get("duration").is_none() {
            t.missing(src, "duration", "how long it lasts, e.g. \"2s\"");
        }
        let every = t.duration(src, "every", Duration::from_millis(1), max);
        let at = t.duration(src, "at", Duration::ZERO, max);
        let offset = t.duration(src, "offset", Duration::ZERO, max);
        let span = t.span();
        t.finish(src);
        let Some(duration) = duration else { continue };
        match (every, at) {
            (Some(every), None) => {
                if duration >= every {
                    let what = if path.contains("stalls") {
                        "a stall"
                    } else {
                        "an outage"
                    };
                    src.error(span, &p, format!("{what} must be shorter than its period"));
                    continue;
                }
                out.push(Schedule::Periodic {
                    every,
                    duration,
                    offset: offset.unwrap_or(every),
                });
            }
            (None, Some(at)) => out.push(Schedule::Once { at, duration }),
            _ => src.error(span, &p, "give either `every` (periodic) or `at` (once)"),
        }
    }
    Some(out)
}

fn read_policy(src: &mut Source<'_>, mut t: Table<'_, '_>, mut policy: Policy) -> Policy {
    if let Some(v) = t.get("block") {
        let path = t.path("block");
        for (i, s, span) in string_items(src, v, &path) {
            match port_rule(&s) {
                Ok(r) => policy.block.push(r),
                Err(e) => src.error(span, &format!("{path}[{i}]"), e),
            }
        }
    }
    if let Some(v) = t.get("unresolvable") {
        let path = t.path("unresolvable");
        for (_, s, _) in string_items(src, v, &path) {
            policy.unresolvable.push(s);
        }
    }
    if let Some(v) = t.get("inbound_udp_allow") {
        let path = t.path("inbound_udp_allow");
        let mut ranges = Vec::new();
        for (i, s, span) in string_items(src, v, &path) {
            match port_range(&s) {
                Ok(r) => ranges.push(r),
                Err(e) => src.error(span, &format!("{path}[{i}]"), e),
            }
        }
        policy.inbound_udp_allow = Some(ranges);
    }
    if let Some(b) = t.boolean(src, "breaks_websocket_upgrade") {
        policy.breaks_websocket_upgrade = b;
    }
    if let Some(d) = t.duration(
        src,
        "tls_cache_expiry",
        Duration::ZERO,
        Duration::from_secs(7 * 86_400),
    ) {
        policy.tls_cache_expiry = Some(d);
    }
    if let Some(d) = t.duration(
        src,
        "stalls_websocket_after",
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
    ) {
        policy.stalls_websocket_after = Some(d);
    }
    t.finish(src);
    policy
}

fn string_items(
    src: &mut Source<'_>,
    v: &Value<'_>,
    path: &str,
) -> Vec<(usize, String, std::ops::Range<usize>)> {
    let DeValue::Array(items) = v.get_ref() else {
        src.error(
            v.span(),
            path,
            format!(
                "expected an array of strings, found {}",
                v.get_ref().type_str()
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get_ref() {
            DeValue::String(s) => out.push((i, s.to_string(), item.span())),
            other => src.error(
                item.span(),
                &format!("{path}[{i}]"),
                format!("expected a string, found {}", other.type_str()),
            ),
        }
    }
    out
}

fn port_rule(s: &str) -> Result<PortRule, String> {
    let (proto, ports) = s.split_once('/').unwrap_or((s, ""));
    let transport = match proto {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        _ => {
            return Err(format!(
                "expected \"udp\", \"tcp\", \"udp/PORT\" or \"tcp/FIRST-LAST\", found \"{s}\""
            ));
        }
    };
    let ports = if ports.is_empty() {
        None
    } else {
        Some(port_range(ports)?)
    };
    Ok(PortRule { transport, ports })
}

fn port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let parse = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p > 0);
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    match (parse(a), parse(b)) {
        (Some(a), Some(b)) if a <= b => Ok(a..=b),
        _ => Err(format!(
            "expected a port (1-65535) or a range \"FIRST-LAST\", found \"{s}\""
        )),
    }
}

fn unknown_profile(name: &str, segments: &[&str]) -> String {
    let profiles: Vec<&str> = profiles::all().iter().map(|p| p.name).collect();
    let mut known: Vec<&str> = profiles.clone();
    known.extend_from_slice(segments);
    let hint = closest(name, &known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    let mut msg = format!(
        "unknown profile or segment `{name}`{hint}; profiles: {}",
        profiles.join(", ")
    );
    if !segments.is_empty() {
        msg.push_str(&format!("; segments in this file: {}", segments.join(", ")));
    }
    msg
}

fn read_sites(
    src: &mut Source<'_>,
    v: &Value<'_>,
    segments: &BTreeMap<String, Segment>,
    common: &Policy,
) -> Option<Vec<Site>> {
    let DeValue::Array(items) = v.get_ref() else {
        src.error(v.span(), "site", "expected [[site]] tables");
        return None;
    };
    let segment_names: Vec<&str> = segments.keys().map(String::as_str).collect();
    let mut sites = Vec::new();
    let mut names = BTreeSet::new();
    let mut complete = true;
    for (i, item) in items.iter().enumerate() {
        let p = format!("site[{i}]");
        let Some(mut t) = Table::from_value(src, item, &p) else {
            complete = false;
            continue;
        };
        let name = match t.string(src, "name") {
            Some((n, span)) => {
                if !names.insert(n.clone()) {
                    src.error(
                        span,
                        &t.path("name"),
                        format!("site `{n}` is defined twice"),
                    );
                }
                Some(n)
            }
            None => {
                t.missing(src, "name", "a name for the site, e.g. name = \"hq\"");
                None
            }
        };
        let share = t
            .number(src, "share", 0.0..=1.0)
            .unwrap_or(if items.len() == 1 { 1.0 } else { f64::NAN });
        if share.is_nan() && t.get("share").is_none() {
            t.missing(
                src,
                "share",
                "with several sites, each needs its share of the agents",
            );
        }
        let mut path = Path::default();
        let mut profile = Vec::new();
        match t.get("path") {
            None => t.missing(
                src,
                "path",
                "the path's profiles or segments, agent side first, e.g. path = [\"office-lan\"]",
            ),
            Some(pv) => {
                let pp = t.path("path");
                let items = string_items(src, pv, &pp);
                if items.is_empty() && matches!(pv.get_ref(), DeValue::Array(_)) {
                    src.error(
                        pv.span(),
                        &pp,
                        "a path needs at least one profile or segment",
                    );
                }
                for (j, s, span) in items {
                    profile.push(s.clone());
                    if let Some(seg) = segments.get(&s) {
                        path.segments.push(seg.clone());
                    } else if let Some(prof) = profiles::by_name(&s) {
                        path.segments.extend(prof.segments);
                    } else {
                        src.error(
                            span,
                            &format!("{pp}[{j}]"),
                            unknown_profile(&s, &segment_names),
                        );
                        complete = false;
                    }
                }
            }
        }
        let policy = match t.get("policy") {
            Some(pv) => Table::from_value(src, pv, t.path("policy"))
                .map_or(common.clone(), |pt| read_policy(src, pt, common.clone())),
            None => common.clone(),
        };
        t.finish(src);
        match name {
            Some(name) if !share.is_nan() => sites.push(Site {
                name,
                share,
                profile: profile.join(" + "),
                path,
                policy,
            }),
            _ => complete = false,
        }
    }
    let total: f64 = sites.iter().map(|s| s.share).sum();
    if complete && !sites.is_empty() && (total - 1.0).abs() > 1e-6 {
        src.error(
            v.span(),
            "site",
            format!("the sites' shares must add up to 1, they add up to {total}"),
        );
    }
    if items.is_empty() {
        src.error(v.span(), "site", "at least one [[site]] is needed");
    }
    (complete && !sites.is_empty()).then_some(sites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_never_cut_a_character() {
        // The pattern's head ends inside the host's first (two-byte) character.
        assert!(!glob("a*", "é.example"));
        assert!(glob("é*", "é.example"));
        assert!(glob("turn.*", "TURN.sim.local"));
    }

    #[test]
    fn policy_rules() {
        let p = Policy {
            block: vec![
                port_rule("udp/3478").unwrap(),
                port_rule("tcp/5000-5010").unwrap(),
            ],
            unresolvable: vec!["turn.*".into(), "*.blocked.example".into()],
            inbound_udp_allow: Some(vec![port_range("3478").unwrap()]),
            ..Policy::default()
        };
        assert!(p.blocks(Transport::Udp, 3478));
        assert!(!p.blocks(Transport::Tcp, 3478));
        assert!(p.blocks(Transport::Tcp, 5005));
        assert!(!p.resolves("turn.sim.local"));
        assert!(!p.resolves("a.b.blocked.example"));
        assert!(p.resolves("signalling.sim.local"));
        assert!(!p.admits_inbound_udp(50_000));
        assert!(p.admits_inbound_udp(3478));
        assert!(Policy::default().admits_inbound_udp(50_000));
    }
}
