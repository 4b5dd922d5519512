//! `sim run`: the whole media path on one machine — TURN server, signalling endpoint, media
//! anchor and each site's impaired path started in process, then the scenario's calls placed at
//! its concurrency and ramp, every record appended to `calls.jsonl` as its call ends, and the
//! verdict written when the run ends (or is interrupted).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use loadgen::leg::TurnTransport;
use loadgen::runner::{Load, LoadEvents, run_calls};
use loadgen::session::{CallSpec, Timeouts, TurnName, TurnServer};
use loadgen::signalling::Endpoint;
use reports::emodel::Codec as EModelCodec;
use reports::output::SummaryFile;
use reports::record::append_record;
use reports::{
    CallIdentity, CallKind, CallRecord, Components, FailureClass, RunSummary, Shard, Verdict,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;

use crate::anchor::recording::{RECORDINGS, Recording};
use crate::anchor::{AnchorBehaviour, AnchorConfig, AnchorStats};
use crate::netem::Rng;
use crate::overload::Monitor;
use crate::relay::{
    InspectingProxy, InspectingProxyConfig, InspectionCa, TcpRelay, TcpRelayConfig, UdpRelay,
    UdpRelayConfig,
};
use crate::scenario::{Codec, Fault, FaultKind, Scenario, Transport, TurnUrl};
use crate::signalling::SignallingServer;

/// Overrides of the scenario from the command line (DESIGN §7).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The run folder (default `runs/<scenario>-<UTC timestamp>/`).
    pub out: Option<PathBuf>,
    /// The seed.
    pub seed: Option<u64>,
    /// Call attempts.
    pub calls: Option<u32>,
    /// Talk time of each call.
    pub call_duration: Option<Duration>,
    /// Show progress as plain lines even on a terminal (or never a bar).
    pub plain_progress: bool,
    /// Virtual time's threads (the CLI's default: one per core; `None`: 1, so that a caller
    /// beside others, a test, takes no core it did not ask for); the results do not depend
    /// on it.
    pub threads: Option<usize>,
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// The run folder.
    pub dir: PathBuf,
    /// The verdict and figures written to `summary.json`.
    pub summary: SummaryFile,
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The scenario asks for something this version cannot run.
    #[error("{0}")]
    Unsupported(String),
    /// A component could not start, or a file could not be written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
    let what = what.into();
    move |source| RunError::Io { what, source }
}

/// Runs `scenario` and writes its run folder.
pub fn run(scenario: &Scenario, options: &RunOptions) -> Result<RunOutcome, RunError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    let calls = options.calls.unwrap_or(scenario.agents.calls);
    let talk = options
        .call_duration
        .unwrap_or(scenario.agents.call_duration);
    let dir = options.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-{}",
            scenario.name,
            utc_stamp(SystemTime::now())
        ))
    });
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let run_id = dir.file_name().map_or_else(
        || scenario.name.clone(),
        |n| n.to_string_lossy().into_owned(),
    );

    // The vendor side: TURN, signalling, anchor.
    let epoch = Instant::now();
    let codec = match scenario.agents.codec {
        Codec::Opus => EModelCodec::OPUS,
        Codec::G711 => EModelCodec::G711_PLC,
    };
    // The scenario parser checked the URL; only its host and port are used here.
    let (signalling_host, signalling_port) =
        loadgen::signalling::host_port(&scenario.signalling_url).map_err(RunError::Unsupported)?;
    // One certificate for the signalling host and every TURN host (the `turns:` servers').
    let mut names = vec![signalling_host.clone()];
    names.extend(scenario.turn.urls.iter().map(|u| u.host.clone()));
    let recording = scenario.recording.map(|sides| Recording {
        dir: dir.join(RECORDINGS),
        sides,
    });
    let mut vendor = VendorSide::start(
        seed,
        &names,
        loopback(),
        epoch,
        codec,
        AnchorBehaviour::Answer,
        recording,
        &Deployed::default(),
    )?;
    vendor.add_turn_nodes(scenario.turn.nodes)?;
    let (cert, password) = (vendor.certificate.clone(), vendor.password.clone());
    let turn_tls = loadgen::signalling::tls_client_config(std::slice::from_ref(&cert))
        .map_err(|e| io_err("TURN TLS client")(io::Error::other(e)))?;

    // The agents' side: each site's path in front of TURN and signalling.
    let mut sites = Vec::new();
    for (i, site) in scenario.sites.iter().enumerate() {
        let site_seed = site_seed(seed, i);
        // The site's path for a byte stream (TURN over TCP/TLS, signalling) to `upstream`.
        let stream_path = |upstream, server_port| {
            TcpRelay::start(TcpRelayConfig {
                listen: loopback(),
                upstream,
                path: site.path.clone(),
                seed: site_seed,
                policy: site.policy.clone(),
                reset_after: None,
                server_port: Some(server_port),
            })
        };
        // One path per TURN URL and node, to the node's listener of that transport. The
        // firewall sees the port in the agents' URL (3478, 443), not the port our server
        // happens to have.
        let mut media = Vec::new();
        for url in &scenario.turn.urls {
            let mut nodes = Vec::new();
            for node in 0..usize::from(scenario.turn.nodes) {
                let why = format!("starting site {}'s path to {url}", site.name);
                let upstream = vendor.turn_node_listener(node, url);
                nodes.push(match url.transport {
                    Transport::Udp => TurnPath::Udp(
                        UdpRelay::start(UdpRelayConfig {
                            listen: loopback(),
                            upstream,
                            path: site.path.clone(),
                            seed: site_seed,
                            policy: site.policy.clone(),
                            server_port: Some(url.port),
                        })
                        .map_err(io_err(why))?,
                    ),
                    Transport::Tcp => {
                        TurnPath::Stream(stream_path(upstream, url.port).map_err(io_err(why))?)
                    }
                });
            }
            media.push(nodes);
        }
        // Each URL's name, as this site's agents resolve it: a node leaves the DNS when its
        // fault says.
        let names = media
            .iter()
            .map(|nodes| {
                let entries = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, path)| {
                        (
                            path.local_addr(),
                            dns_removal(&scenario.faults, i).map(|d| epoch + d),
                        )
                    })
                    .collect();
                Arc::new(crate::dns::NodeName::new(entries))
            })
            .collect();
        let (mut upstream, mut roots) = (vendor.signalling_addr(), vec![cert.clone()]);
        let proxy = if site.policy.inspection().inspects() {
            let ca = Arc::new(
                InspectionCa::new(loadgen::entropy::Entropy::Os)
                    .map_err(|e| io_err("inspection CA")(io::Error::other(e)))?,
            );
            let p = InspectingProxy::start(InspectingProxyConfig {
                listen: loopback(),
                upstream,
                server_name: signalling_host.clone(),
                upstream_roots: vec![cert.clone()],
                ca: ca.clone(),
                policy: site.policy.inspection(),
            })
            .map_err(io_err(format!("starting site {}'s proxy", site.name)))?;
            upstream = p.local_addr();
            roots = vec![ca.certificate()];
            Some(p)
        } else {
            None
        };
        let control = stream_path(upstream, signalling_port).map_err(io_err(format!(
            "starting site {}'s signalling path",
            site.name
        )))?;
        sites.push(SitePlumbing {
            name: site.name.clone(),
            media,
            names,
            control,
            proxy,
            roots,
        });
    }

    // The simulator's own components watched while the calls run: the sites' paths, the
    // anchor and the signalling endpoint, read live. (The TURN nodes' counters go through
    // their event loops; their failed sends are counted at the end.)
    let mut live: Vec<LiveCounters> = sites
        .iter()
        .flat_map(|site| site.counters(&scenario.turn.urls))
        .collect();
    let (media, signalling) = (vendor.media_counters.clone(), vendor.signalling.stats());
    live.push(("anchor".into(), Box::new(move || media.totals())));
    live.push(("signalling".into(), Box::new(move || signalling.totals())));
    let monitor = Monitor::start(move || {
        let mut components = Components::new();
        for (name, read) in &live {
            components.add(name, read());
        }
        components
    })
    .map_err(io_err("starting the overload monitor"))?;

    // The calls, and the faults at their times.
    let faults = schedule_faults(scenario, &vendor, epoch);
    let plan = plan_calls(scenario, seed, calls);
    let mut jsonl =
        File::create(dir.join("calls.jsonl")).map_err(io_err("creating calls.jsonl"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the agents' runtime"))?;
    let progress = Progress::new(u64::from(calls), options.plain_progress);
    let timeouts = Timeouts {
        websocket_connect: scenario.agents.timeouts.websocket_connect,
        ice_collection: scenario.agents.timeouts.ice_collection,
        invite_answer: scenario.agents.timeouts.invite_answer,
        ack: scenario.agents.timeouts.ack,
        keepalive: scenario.agents.timeouts.keepalive,
        ..Timeouts::default()
    };
    let mut sink = RecordSink {
        jsonl: &mut jsonl,
        progress: &progress,
        records: Vec::with_capacity(plan.len()),
        recording: scenario.recording.is_some(),
    };
    let load = Load {
        concurrency: scenario.agents.concurrency,
        ramp_per_second: scenario.agents.ramp_per_second,
    };
    let interrupted = runtime.block_on(run_calls(
        calls,
        load,
        |i, hangup| {
            let planned_call = &plan[i as usize];
            let site = &scenario.sites[planned_call.site];
            let plumbing = &sites[planned_call.site];
            CallSpec {
                identity: CallIdentity {
                    run: run_id.clone(),
                    call: format!("c{:05}", planned_call.index),
                    agent: format!(
                        "agent-{:04}",
                        planned_call.index % scenario.agents.concurrency.max(1)
                    ),
                    scenario: scenario.name.clone(),
                    site: site.name.clone(),
                    profile: site.profile.clone(),
                    kind: planned_call.kind,
                    shard: Shard::WHOLE,
                },
                signalling: crate::dns::resolve(
                    &site.policy,
                    &signalling_host,
                    Endpoint {
                        url: scenario.signalling_url.clone(),
                        addr: plumbing.control.local_addr(),
                        roots: plumbing.roots.clone(),
                    },
                ),
                turn: scenario
                    .turn
                    .urls
                    .iter()
                    .zip(&plumbing.names)
                    .map(|(url, name)| turn_server(url, &site.policy, name, &turn_tls))
                    .collect(),
                turn_username: "agent".into(),
                turn_password: password.clone(),
                turn_realm: "sim.local".into(),
                timeouts,
                talk,
                dead_air: scenario.agents.dead_air,
                codec,
                epoch,
                ssrc: 0x1000_0000 | planned_call.index,
                hangup: Some(hangup),
            }
        },
        &mut sink,
    ));
    let mut records = sink.records;
    drop(faults);
    let own_lateness = monitor.finish();
    progress.finish();
    // Failures that began while the simulator was late say so: calls.jsonl, appended as the
    // calls ended, is written again with the marks (a crash before this keeps the unmarked
    // one).
    if own_lateness.mark(&mut records) > 0 {
        crate::report::copy_records(&records, &dir)
            .map_err(|e| io_err("writing calls.jsonl")(io::Error::other(e)))?;
    }

    let mut file = summarise(scenario, &records, interrupted);
    vendor.count_into(&mut file.components);
    for site in &sites {
        site.count_into(&scenario.turn.urls, &mut file.components);
    }
    file.own_lateness = own_lateness;
    file.settle_verdict();
    write_outputs(&dir, &records, &file)?;

    drop(sites);
    vendor.stop();
    Ok(RunOutcome { dir, summary: file })
}

/// What a deployed vendor side (`sim serve` in a Kubernetes Deployment, say) fixes that a run
/// leaves to chance: agents on other machines reach it through a Service's port, trust the
/// certificate they were given, and know the TURN password.
#[derive(Debug, Clone, Default)]
pub struct Deployed {
    /// The signalling endpoint's port (0: the OS picks one).
    pub signalling_port: u16,
    /// The certificate chain and private key (PEM) of the signalling endpoint and the TURN
    /// server's TLS listener (default: self-signed for the host names at start).
    pub identity: Option<(String, String)>,
    /// The TURN password of user `agent` (default: derived from the seed).
    pub password: Option<String>,
}

/// The vendor's side of every call — TURN server, signalling endpoint and media anchor — as
/// `sim run` starts it, and as `sim serve` offers it to an external `loadgen`.
pub struct VendorSide {
    /// The TURN nodes behind the TURN names (one unless the scenario asks for more).
    turn: Vec<turn_server::io::Running>,
    /// The TURN servers' TLS certificate and key (PEM), for the nodes added later.
    turn_tls: (String, String),
    signalling: SignallingServer,
    anchor: std::thread::JoinHandle<()>,
    /// The signalling endpoint's certificate (self-signed for its host name, or the first of
    /// the chain it was given).
    pub certificate: CertificateDer<'static>,
    /// The same, PEM-encoded, for agents outside this process.
    pub certificate_pem: String,
    /// The agents' TURN password (user `agent`, realm `sim.local`).
    pub password: String,
    /// The anchor's counters.
    pub anchor_stats: Arc<AnchorStats>,
    /// The anchor's media server's counters.
    pub media_counters: Arc<crate::anchor::media::MediaCounters>,
}

impl std::fmt::Debug for VendorSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VendorSide")
            .field("turn", &self.turn_addr())
            .field("signalling", &self.signalling_addr())
            .finish_non_exhaustive()
    }
}

impl VendorSide {
    /// Starts the three on `bind` (port 0 each, unless `deployed` fixes the signalling port),
    /// one certificate for the signalling endpoint and the TURN server's TLS listener carrying
    /// `names` (unless `deployed` gives one), the anchor behaving as `behaviour` (tests inject
    /// the vendor side's faults through it) and recording calls as `recording` asks.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        seed: u64,
        names: &[String],
        bind: SocketAddr,
        epoch: Instant,
        codec: EModelCodec,
        behaviour: AnchorBehaviour,
        recording: Option<Recording>,
        deployed: &Deployed,
    ) -> Result<Self, RunError> {
        let password = deployed.password.clone().unwrap_or_else(|| {
            format!(
                "{:016x}",
                Rng::for_stream(seed, &[PASSWORD_STREAM]).next_u64()
            )
        });
        let (chain_pem, key_pem) = match &deployed.identity {
            Some(pems) => pems.clone(),
            None => {
                let ck = rcgen::generate_simple_self_signed(names.to_vec())
                    .map_err(|e| io_err("certificate")(io::Error::other(e)))?;
                (ck.cert.pem(), ck.signing_key.serialize_pem())
            }
        };
        let bad_pem = |what: &str, e: rustls::pki_types::pem::Error| {
            io_err(format!("reading the {what}"))(io::Error::other(e.to_string()))
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| bad_pem("certificate chain", e))?;
        let Some(certificate) = chain.first().cloned() else {
            return Err(io_err("reading the certificate chain")(io::Error::other(
                "no certificate in it",
            )));
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| bad_pem("private key", e))?;
        let turn_tls = (chain_pem.clone(), key_pem);
        let turn = vec![start_turn(&password, bind, turn_tls.clone())?];
        let certificate_pem = chain_pem;
        let (to_anchor, requests) = mpsc::unbounded_channel();
        let signalling = SignallingServer::start(
            SocketAddr::new(bind.ip(), deployed.signalling_port),
            chain,
            key,
            to_anchor,
        )
        .map_err(io_err("starting the signalling endpoint"))?;
        let anchor_stats = Arc::new(AnchorStats::default());
        let config = AnchorConfig {
            epoch,
            codec,
            behaviour,
            consent_timeout: crate::anchor::media::CONSENT_TIMEOUT,
        };
        let stats = anchor_stats.clone();
        let media = crate::anchor::media::MediaServer::start(bind.ip(), epoch, codec, recording)
            .map_err(io_err("starting the anchor's media server"))?;
        let media_counters = media.counters.clone();
        let anchor = std::thread::Builder::new()
            .name("anchor".into())
            .spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(crate::anchor::serve(config, media, requests, stats));
                }
            })
            .map_err(io_err("starting the anchor"))?;
        Ok(Self {
            turn,
            turn_tls,
            signalling,
            anchor,
            certificate,
            certificate_pem,
            password,
            anchor_stats,
            media_counters,
        })
    }

    /// Adds what the TURN server, the signalling endpoint and the anchor have counted so far
    /// to `components`. Call it outside any async runtime (it waits for the TURN server).
    ///
    /// The agents' last datagrams (their allocations' release) may still be crossing the
    /// emulated paths when the calls end: it waits until the server holds no allocation, for a
    /// second at most (a panicking agent never releases its own).
    pub fn count_into(&self, components: &mut Components) {
        let settled = Instant::now() + Duration::from_secs(1);
        for (i, node) in self.turn.iter().enumerate() {
            let snapshot = loop {
                match node.handle().snapshot_blocking() {
                    // A failed node's allocations are never released: its counts are final.
                    Some(s)
                        if s.gauges.allocations > 0
                            && !s.faults.unresponsive
                            && Instant::now() < settled =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    last => break last,
                }
            };
            if let Some(snapshot) = snapshot {
                let name = match self.turn.len() {
                    1 => "turn".to_owned(),
                    _ => format!("turn node {}", i + 1),
                };
                components.add(&name, snapshot.totals());
            }
        }
        components.add("signalling", self.signalling.stats().totals());
        let mut anchor = self.anchor_stats.totals();
        anchor.extend(self.media_counters.totals());
        components.add("anchor", anchor);
    }

    /// Starts TURN nodes until there are `nodes` (the first is started with the rest), each
    /// with the same users, certificate and quotas, on the first's address and port 0.
    pub fn add_turn_nodes(&mut self, nodes: u8) -> Result<(), RunError> {
        let bind = SocketAddr::new(self.turn_addr().ip(), 0);
        while self.turn.len() < usize::from(nodes) {
            let node = start_turn(&self.password, bind, self.turn_tls.clone())?;
            self.turn.push(node);
        }
        Ok(())
    }

    /// The control handle of TURN node `node` (from 0), for the scenario's faults.
    pub fn turn_handle(&self, node: usize) -> Option<turn_server::io::Handle> {
        self.turn.get(node).map(turn_server::io::Running::handle)
    }

    /// The first TURN node's UDP address.
    pub fn turn_addr(&self) -> SocketAddr {
        self.turn[0].bound.udp[0]
    }

    /// The first TURN node's listener for `url`'s transport (UDP, TCP or TLS).
    pub fn turn_listener(&self, url: &TurnUrl) -> SocketAddr {
        self.turn_node_listener(0, url)
    }

    /// TURN node `node`'s (from 0) listener for `url`'s transport.
    pub fn turn_node_listener(&self, node: usize, url: &TurnUrl) -> SocketAddr {
        let b = &self.turn[node].bound;
        match (url.transport, url.secure) {
            (Transport::Udp, _) => b.udp[0],
            (Transport::Tcp, false) => b.tcp[0],
            (Transport::Tcp, true) => b.tls[0],
        }
    }

    /// The signalling endpoint's address.
    pub fn signalling_addr(&self) -> SocketAddr {
        self.signalling.local_addr()
    }

    /// Stops all three.
    pub fn stop(self) {
        // Closing the endpoint closes the anchor's request channel, which ends the anchor.
        self.signalling.shutdown();
        let _ = self.anchor.join();
        for node in self.turn {
            let _ = node.stop();
        }
    }
}

/// Appends each record to `calls.jsonl` as its call ends, and shows it in the progress.
struct RecordSink<'a> {
    jsonl: &'a mut File,
    progress: &'a Progress,
    records: Vec<CallRecord>,
    /// The anchor records every call that connects.
    recording: bool,
}

impl LoadEvents for RecordSink<'_> {
    fn started(&mut self) {
        self.progress.call_started();
    }

    fn ended(&mut self, mut record: CallRecord) {
        if self.recording {
            mark_recording(&mut record);
        }
        // A write error must not lose the run: the record is kept for the summary regardless.
        if let Err(e) = append_record(self.jsonl, &record) {
            self.progress.note(&format!("calls.jsonl: {e}"));
        }
        self.progress.call_ended(&record);
        self.records.push(record);
    }

    fn interrupted(&mut self) {
        self.progress
            .note("interrupted: no new calls, hanging up the live ones");
    }
}

/// A site's path to one TURN listener.
enum TurnPath {
    Udp(UdpRelay),
    Stream(TcpRelay),
}

impl TurnPath {
    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Udp(r) => r.local_addr(),
            Self::Stream(r) => r.local_addr(),
        }
    }
}

struct SitePlumbing {
    name: String,
    /// Per TURN URL, per node: the site's path to it.
    media: Vec<Vec<TurnPath>>,
    /// Per TURN URL: its name as the site resolves it.
    names: Vec<Arc<crate::dns::NodeName>>,
    control: TcpRelay,
    proxy: Option<InspectingProxy>,
    roots: Vec<CertificateDer<'static>>,
}

/// A component's name and a reader of its live counters.
type LiveCounters = (String, Box<dyn Fn() -> Vec<(&'static str, u64)> + Send>);

impl SitePlumbing {
    /// The site's paths (and its inspecting proxy), each with a reader of its counters.
    fn counters(&self, urls: &[TurnUrl]) -> Vec<LiveCounters> {
        let mut out: Vec<LiveCounters> = Vec::new();
        for (url, nodes) in urls.iter().zip(&self.media) {
            for (i, path) in nodes.iter().enumerate() {
                let name = match nodes.len() {
                    1 => format!("path {} → {url}", self.name),
                    _ => format!("path {} → {url} node {}", self.name, i + 1),
                };
                out.push(match path {
                    TurnPath::Udp(r) => {
                        let stats = r.stats();
                        (name, Box::new(move || stats.totals()))
                    }
                    TurnPath::Stream(r) => {
                        let stats = r.stats();
                        (name, Box::new(move || stats.totals()))
                    }
                });
            }
        }
        let control = self.control.stats();
        out.push((
            format!("path {} → signalling", self.name),
            Box::new(move || control.totals()),
        ));
        if let Some(proxy) = &self.proxy {
            let stats = proxy.stats();
            out.push((
                format!("proxy {}", self.name),
                Box::new(move || stats.totals()),
            ));
        }
        out
    }

    /// Adds what the site's paths (and its inspecting proxy) counted to `components`.
    fn count_into(&self, urls: &[TurnUrl], components: &mut Components) {
        for (name, read) in self.counters(urls) {
            components.add(&name, read());
        }
    }
}

/// When the DNS stops answering TURN node `node`'s address, from the run's start: its first
/// failure's, if any.
pub(crate) fn dns_removal(faults: &[Fault], node: usize) -> Option<Duration> {
    faults
        .iter()
        .filter_map(|f| match f.kind {
            FaultKind::TurnNodeDown {
                node: n,
                dns_removed_after,
                ..
            } if usize::from(n) == node => Some(f.at + dns_removed_after),
            FaultKind::TurnNodeDown { .. } => None,
        })
        .min()
}

/// What the scenario's faults set on the TURN nodes: from when (from the run's start), on
/// which node (from 0), which faults, in time order.
pub(crate) fn turn_faults(faults: &[Fault]) -> Vec<(Duration, usize, turn_server::Faults)> {
    let mut due: Vec<_> = faults
        .iter()
        .map(|f| match f.kind {
            FaultKind::TurnNodeDown {
                node,
                reset_streams,
                ..
            } => (
                f.at,
                usize::from(node),
                turn_server::Faults {
                    unresponsive: true,
                    drop_streams: reset_streams,
                    ..Default::default()
                },
            ),
        })
        .collect();
    due.sort_by_key(|(at, ..)| *at);
    due
}

/// Carries out the scenario's faults at their times (from `epoch`) on their own thread,
/// until they are done or the returned sender is dropped (the run ended first).
fn schedule_faults(
    scenario: &Scenario,
    vendor: &VendorSide,
    epoch: Instant,
) -> Option<std::sync::mpsc::Sender<()>> {
    let due: Vec<(Instant, turn_server::io::Handle, turn_server::Faults)> =
        turn_faults(&scenario.faults)
            .into_iter()
            .filter_map(|(at, node, faults)| Some((epoch + at, vendor.turn_handle(node)?, faults)))
            .collect();
    if due.is_empty() {
        return None;
    }
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("faults".into())
        .spawn(move || {
            for (at, handle, faults) in due {
                let wait = at.saturating_duration_since(Instant::now());
                if !matches!(
                    stopped.recv_timeout(wait),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                ) {
                    return;
                }
                handle.set_faults(faults);
            }
        });
    spawned.is_ok().then_some(stop)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn start_turn(
    password: &str,
    bind: SocketAddr,
    tls_pem: (String, String),
) -> Result<turn_server::io::Running, RunError> {
    let mut settings = turn_server::io::Settings::loopback("agent", password, "sim.local");
    settings.listen = vec![bind];
    settings.tls_listen = vec![bind];
    settings.tls_pem = Some(tls_pem);
    // The anchor's host addresses are on the served address too (loopback by default).
    if let Ok(own) = format!("{}/32", bind.ip()).parse() {
        settings.core.peer_policy.allow.push(own);
    }
    // Quotas sized for a load test, not for a public server.
    settings.core.user_quota = 100_000;
    settings.core.total_quota = 100_000;
    turn_server::io::start(settings).map_err(io_err("starting the TURN server"))
}

pub(crate) struct PlannedCall {
    pub(crate) index: u32,
    pub(crate) site: usize,
    pub(crate) kind: CallKind,
}

/// Streams of the scenario's seed for what the run decides (see `Rng::for_stream`).
const SITE_STREAM: u64 = 1;
const PASSWORD_STREAM: u64 = 2;
const KIND_STREAM: u64 = 3;

/// The summary of a run's records, judged as `scenario` says (its verdict not yet settled:
/// the caller adds what it counted of its own components first).
pub(crate) fn summarise(
    scenario: &Scenario,
    records: &[CallRecord],
    interrupted: bool,
) -> SummaryFile {
    let mut summary = RunSummary::new();
    for r in records {
        // Invariant: records are built by this crate with units it chose; a unit clash is a bug.
        let _ = summary.add(r);
    }
    SummaryFile::new(
        &scenario.name,
        summary,
        scenario.threshold,
        scenario.confidence,
        interrupted,
    )
}

/// TURN server `url` as an agent at a site with `policy` is given it: its name as the site's
/// DNS resolves it (`name`'s nodes in turn, or the site's refusal), and its transport (a
/// `turns:` one trusting `tls`).
pub(crate) fn turn_server(
    url: &TurnUrl,
    policy: &crate::scenario::Policy,
    name: &Arc<crate::dns::NodeName>,
    tls: &Arc<rustls::ClientConfig>,
) -> TurnServer {
    TurnServer {
        url: url.to_string(),
        addr: match crate::dns::resolve(policy, &url.host, name.clone()) {
            Ok(name) => {
                let host = url.host.clone();
                TurnName::new(move |now| name.resolve(&host, now))
            }
            Err(e) => TurnName::fixed(Err(e)),
        },
        transport: match (url.transport, url.secure) {
            (Transport::Udp, _) => TurnTransport::Udp,
            (Transport::Tcp, false) => TurnTransport::Tcp,
            (Transport::Tcp, true) => TurnTransport::Tls {
                server_name: url.host.clone(),
                config: tls.clone(),
            },
        },
    }
}

/// Names in `record` the recording the anchor made of it, if it connected (the anchor
/// records from the moment the agent's leg connects).
pub(crate) fn mark_recording(record: &mut CallRecord) {
    if record.milestones.dtls_connected_us.is_some() {
        record.recording = Some(format!(
            "{RECORDINGS}/{}",
            crate::anchor::recording::file_name(&record.identity.call)
        ));
    }
}

/// The seed of site `i`'s paths.
pub(crate) fn site_seed(seed: u64, site: usize) -> u64 {
    Rng::for_stream(seed, &[SITE_STREAM, site as u64]).next_u64()
}

/// Which site and kind each call gets: sites by their shares (largest remainder, so 200 calls
/// at 50/50 are exactly 100/100), interleaved so that every site ramps up together; kinds drawn
/// from the mix with the scenario's seed.
pub(crate) fn plan_calls(scenario: &Scenario, seed: u64, calls: u32) -> Vec<PlannedCall> {
    let shares: Vec<f64> = scenario.sites.iter().map(|s| s.share).collect();
    let sites = interleave(&site_counts(&shares, calls));
    let mix: Vec<(CallKind, f64)> = scenario.agents.mix.iter().map(|(k, s)| (*k, *s)).collect();
    let mut rng = Rng::for_stream(seed, &[KIND_STREAM]);
    (0..calls)
        .map(|index| {
            let u = rng.uniform();
            let mut acc = 0.0;
            let kind = mix.iter().find(|(_, s)| {
                acc += s;
                u < acc
            });
            PlannedCall {
                index,
                site: sites[index as usize],
                kind: kind.map_or(CallKind::Inbound, |(k, _)| *k),
            }
        })
        .collect()
}

/// Calls per site: `share × calls` rounded down, the remainder to the largest fractions.
fn site_counts(shares: &[f64], calls: u32) -> Vec<u32> {
    let mut counts: Vec<u32> = shares
        .iter()
        .map(|s| (s * f64::from(calls)).floor() as u32)
        .collect();
    let rest = calls.saturating_sub(counts.iter().sum());
    let mut order: Vec<usize> = (0..counts.len()).collect();
    let frac = |i: usize| shares[i] * f64::from(calls) - (shares[i] * f64::from(calls)).floor();
    order.sort_by(|&a, &b| frac(b).total_cmp(&frac(a)));
    for &i in order.iter().cycle().take(rest as usize) {
        counts[i] += 1;
    }
    counts
}

/// The site of each call in order: at every step the site furthest behind its share goes next
/// (exact counts, evenly spread, whatever the number of calls).
fn interleave(counts: &[u32]) -> Vec<usize> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let mut placed = vec![0u64; counts.len()];
    (1..=total)
        .filter_map(|step| {
            // Deficit of site s after `step` calls: counts[s]·step/total − placed[s], scaled.
            let site = (0..counts.len())
                .filter(|&s| placed[s] < u64::from(counts[s]))
                .max_by_key(|&s| {
                    (
                        i128::from(counts[s]) * i128::from(step)
                            - i128::from(placed[s]) * i128::from(total),
                        std::cmp::Reverse(s),
                    )
                })?;
            placed[site] += 1;
            Some(site)
        })
        .collect()
}

/// The run folder's derived files, `report.html` and its charts included.
pub(crate) fn write_outputs(
    dir: &FsPath,
    records: &[CallRecord],
    file: &SummaryFile,
) -> Result<(), RunError> {
    crate::report::write(dir, records, file)
        .map_err(|e| io_err("writing the run folder")(io::Error::other(e)))
}

/// Now as `YYYYMMDDTHHMMSSZ` in UTC, as run folders are named.
pub fn utc_now_stamp() -> String {
    utc_stamp(SystemTime::now())
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut stamp: String = reports::output::utc_datetime(ms, 'T')
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    stamp.push('Z');
    stamp
}

/// Live counts: a bar on a terminal, plain lines otherwise.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    started: Instant,
    last_line: std::cell::Cell<Instant>,
    counts: std::cell::RefCell<Counts>,
    /// Where a virtual-time run's clock is, when it is one.
    simulated: std::cell::Cell<Option<Duration>>,
}

#[derive(Default)]
struct Counts {
    attempted: u64,
    completed: u64,
    failed: u64,
    dropped: u64,
    classes: HashMap<FailureClass, u64>,
}

impl Progress {
    pub(crate) fn new(total: u64, plain: bool) -> Self {
        let bar = (!plain && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ended · {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            started: now,
            last_line: std::cell::Cell::new(now),
            counts: std::cell::RefCell::default(),
            simulated: std::cell::Cell::new(None),
        }
    }

    fn message(&self) -> String {
        let c = self.counts.borrow();
        let ended = c.completed + c.failed + c.dropped;
        let rate = if ended == 0 {
            0.0
        } else {
            100.0 * (c.failed + c.dropped) as f64 / ended as f64
        };
        let cps = ended as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut classes: Vec<(&FailureClass, &u64)> = c.classes.iter().collect();
        classes.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = classes
            .iter()
            .take(2)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        format!(
            "{} attempted, {} connected, {} failed, {} dropped, error rate {rate:.1} %, {cps:.1} calls/s{}{}",
            c.attempted,
            c.completed,
            c.failed,
            c.dropped,
            if top.is_empty() {
                String::new()
            } else {
                format!(" ({})", top.join(", "))
            },
            self.simulated.get().map_or(String::new(), |d| format!(
                ", {:.0} s simulated",
                d.as_secs_f64()
            ))
        )
    }

    /// A virtual-time run's clock moved on (the line shows it even while no call starts or
    /// ends, as during a long talk time).
    pub(crate) fn simulated(&self, at: Duration) {
        self.simulated.set(Some(at));
        self.refresh();
    }

    pub(crate) fn call_started(&self) {
        self.counts.borrow_mut().attempted += 1;
        self.refresh();
    }

    pub(crate) fn call_ended(&self, r: &CallRecord) {
        self.ended(r.outcome, r.failure.as_ref().map(|f| f.class));
    }

    /// A call ended so (what the line counts of it).
    pub(crate) fn ended(&self, outcome: reports::Outcome, class: Option<FailureClass>) {
        {
            let mut c = self.counts.borrow_mut();
            match outcome {
                reports::Outcome::Completed => c.completed += 1,
                reports::Outcome::Failed => c.failed += 1,
                reports::Outcome::Dropped => c.dropped += 1,
            }
            if let Some(class) = class {
                *c.classes.entry(class).or_default() += 1;
            }
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.refresh();
    }

    fn refresh(&self) {
        match &self.bar {
            Some(bar) => bar.set_message(self.message()),
            None => {
                if self.last_line.get().elapsed() >= Duration::from_secs(5) {
                    self.last_line.set(Instant::now());
                    let ended = {
                        let c = self.counts.borrow();
                        c.completed + c.failed + c.dropped
                    };
                    eprintln!(
                        "[{:>5.0} s] {ended}/{} ended: {}",
                        self.started.elapsed().as_secs_f64(),
                        self.total,
                        self.message()
                    );
                }
            }
        }
    }

    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub(crate) fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(self.message()),
            None => eprintln!(
                "[{:>5.0} s] done: {}",
                self.started.elapsed().as_secs_f64(),
                self.message()
            ),
        }
    }
}

/// The process exit status for a verdict (documented in the README): 0 pass, 1 fail,
/// 2 inconclusive; 3 is a configuration error.
pub fn exit_code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Pass => 0,
        Verdict::Fail => 1,
        Verdict::Inconclusive => 2,
        Verdict::Invalid => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        // 2026-11-27 09:15:06 UTC = 1 795 770 906 s after the epoch.
        assert_eq!(
            utc_stamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_770_906)),
            "20261127T091506Z"
        );
        assert_eq!(utc_stamp(SystemTime::UNIX_EPOCH), "19700101T000000Z");
    }

    #[test]
    fn sites_get_exact_shares_evenly_spread() {
        // 7919 calls: the old stride-7919 interleave sent them all to one site.
        let counts = site_counts(&[0.5, 0.5], 7919);
        assert_eq!(counts, vec![3960, 3959]);
        let order = interleave(&counts);
        assert_eq!(order.len(), 7919);
        assert_eq!(order.iter().filter(|&&s| s == 0).count(), 3960);
        assert_eq!(&order[..6], &[0, 1, 0, 1, 0, 1]);
        let order = interleave(&site_counts(&[0.75, 0.25], 8));
        assert_eq!(order, vec![0, 0, 1, 0, 0, 0, 1, 0]);
    }
}
