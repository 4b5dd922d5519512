//! `loadgen`: softphone agents aimed at any signalling endpoint and TURN server — the
//! simulator's own (`sim run` starts them in process) or a team's staging stack.
#![allow(clippy::disallowed_methods)] // the binary is an edge: real clock, real sockets

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::Parser;
use hmac::{Hmac, Mac};
use loadgen::leg::TurnTransport;
use loadgen::runner::{Load, LoadEvents, run_calls};
use loadgen::session::{CallSpec, Timeouts, TurnName, TurnServer};
use loadgen::signalling::{Endpoint, tls_client_config};
use loadgen::turn_url::{Transport, TurnUrl};
use reports::emodel::Codec;
use reports::output::SummaryFile;
use reports::record::append_record;
use reports::{CallIdentity, CallKind, CallRecord, Outcome, RunSummary, Shard};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Softphone agents placing real WebRTC calls (relay-only ICE through TURN, DTLS-SRTP, 20 ms
/// audio both ways) against a JSON-RPC-over-WebSocket signalling endpoint, one JSON line per
/// call. The far end must answer `invite` as the simulator's anchor does (see the README).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The signalling endpoint, e.g. wss://signalling.example.com:443/rtc
    #[arg(long)]
    signalling: String,
    /// Connect to this address instead of resolving the URL's host.
    #[arg(long)]
    signalling_addr: Option<SocketAddr>,
    /// Resolve HOST to IP instead of asking DNS, for TURN URLs (repeatable; as curl's
    /// --resolve), e.g. --resolve turn.example.com=127.0.0.1. The URL's host still names the
    /// server for TLS.
    #[arg(long, value_name = "HOST=IP")]
    resolve: Vec<String>,
    /// PEM file of the roots that sign the signalling endpoint's certificate (and a turns:
    /// server's).
    #[arg(long)]
    ca: PathBuf,
    /// A TURN server, e.g. turn:turn.example.com:3478?transport=udp, turn:…?transport=tcp or
    /// turns:turn.example.com:443 (checked against the --ca roots). Repeat it to give several:
    /// each agent allocates on all of them, as a browser gathers from every ICE server.
    #[arg(long, required = true)]
    turn: Vec<String>,
    /// TURN username (long-term credentials).
    #[arg(long, default_value = "agent")]
    turn_user: String,
    /// TURN password (long-term credentials).
    #[arg(long, conflicts_with = "turn_secret")]
    turn_password: Option<String>,
    /// Shared secret of time-limited TURN credentials (username `expiry:user`, password
    /// base64(HMAC-SHA1(secret, username)), as coturn's use-auth-secret).
    #[arg(long)]
    turn_secret: Option<String>,
    /// TURN realm.
    #[arg(long, default_value = "sim.local")]
    realm: String,
    /// Calls to place.
    #[arg(long, default_value_t = 10)]
    calls: u32,
    /// Calls up at once.
    #[arg(long, default_value_t = 10)]
    concurrency: u32,
    /// New calls per second.
    #[arg(long, default_value_t = 10.0)]
    ramp: f64,
    /// Talk time of each call, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Where the call records go (JSON Lines, appended per call).
    #[arg(long, default_value = "calls.jsonl", conflicts_with = "folder")]
    out: PathBuf,
    /// Write a run folder instead: DIR/calls.jsonl as calls end, DIR/summary.json at the end,
    /// so that `sim report` renders it or merges the folders of several shards exactly.
    #[arg(long, value_name = "DIR")]
    folder: Option<PathBuf>,
    /// The error-rate threshold the folder's verdict is judged against, in percent.
    #[arg(long, default_value_t = 2.0)]
    threshold: f64,
    /// This generator's shard, INDEX/COUNT (default: JOB_COMPLETION_INDEX/LOADGEN_SHARDS when
    /// a Kubernetes Indexed Job sets the index, else 0/1).
    #[arg(long)]
    shard: Option<String>,
    /// The run's name in the records.
    #[arg(long, default_value = "loadgen")]
    run: String,
}

/// How the calls went, for the exit status.
enum Finished {
    /// Every call completed.
    Clean,
    /// Some failed or dropped.
    Errors,
    /// This generator fell behind: neither pass nor fail.
    Invalid,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(Finished::Clean) => ExitCode::SUCCESS,
        Ok(Finished::Errors) => ExitCode::from(1),
        Ok(Finished::Invalid) => ExitCode::from(4),
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(3)
        }
    }
}

fn shard(arg: Option<&str>) -> Result<Shard> {
    let text = match arg {
        Some(s) => s.to_owned(),
        None => match std::env::var("JOB_COMPLETION_INDEX") {
            Ok(i) => match std::env::var("LOADGEN_SHARDS") {
                Ok(n) => format!("{i}/{n}"),
                Err(_) => bail!(
                    "JOB_COMPLETION_INDEX is {i} but LOADGEN_SHARDS (the Job's completions) is not \
                     set: set it, or give --shard INDEX/COUNT"
                ),
            },
            Err(_) => return Ok(Shard::WHOLE),
        },
    };
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("--shard expects INDEX/COUNT, got {text}"))?;
    let (index, count): (u32, u32) = (i.parse()?, n.parse()?);
    if count == 0 || index >= count {
        bail!("--shard {text}: INDEX must be below COUNT");
    }
    Ok(Shard { index, count })
}

fn run(cli: &Cli) -> Result<Finished> {
    let shard = shard(cli.shard.as_deref())?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cli.ca)
        .and_then(Iterator::collect)
        .with_context(|| format!("reading {}", cli.ca.display()))?;
    let (host, port) = loadgen::signalling::host_port(&cli.signalling)
        .map_err(|e| anyhow!("--signalling: {e}"))?;
    let signalling_addr = match cli.signalling_addr {
        Some(a) => a,
        None => (host.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow!("{host} does not resolve"))?,
    };
    let mut overrides = std::collections::HashMap::new();
    for r in &cli.resolve {
        let (host, ip) = r
            .split_once('=')
            .and_then(|(h, ip)| Some((h, ip.parse::<std::net::IpAddr>().ok()?)))
            .ok_or_else(|| {
                anyhow!("--resolve {r}: expected HOST=IP, e.g. turn.example.com=127.0.0.1")
            })?;
        overrides.insert(host.to_owned(), ip);
    }
    let mut turn = Vec::new();
    for given in &cli.turn {
        let url = TurnUrl::parse(given).map_err(|e| anyhow!("--turn: {e}"))?;
        let transport = match (url.transport, url.secure) {
            (Transport::Udp, _) => TurnTransport::Udp,
            (Transport::Tcp, false) => TurnTransport::Tcp,
            (Transport::Tcp, true) => TurnTransport::Tls {
                server_name: url.host.clone(),
                config: tls_client_config(&roots).map_err(|e| anyhow!("--ca: {e}"))?,
            },
        };
        let addr = match overrides.get(url.host.as_str()) {
            Some(ip) => Ok(SocketAddr::new(*ip, url.port)),
            None => (url.host.as_str(), url.port)
                .to_socket_addrs()
                .map_err(|e| format!("{}: {e}", url.host))
                .and_then(|mut a| a.next().ok_or_else(|| format!("{}: no address", url.host))),
        };
        turn.push(TurnServer {
            url: url.to_string(),
            // Resolved once, before the calls start (a lookup inside them would block the
            // agents' runtime): an ICE restart goes to the same address.
            addr: TurnName::fixed(addr),
            transport,
        });
    }
    let (username, password) = match (&cli.turn_password, &cli.turn_secret) {
        (Some(p), None) => (cli.turn_user.clone(), p.clone()),
        (None, Some(secret)) => time_limited(secret, &cli.turn_user, Duration::from_secs(86_400))?,
        _ => bail!("give --turn-password or --turn-secret"),
    };

    if !(cli.threshold > 0.0 && cli.threshold < 100.0) {
        bail!(
            "--threshold {}: expected a percentage above 0 and below 100",
            cli.threshold
        );
    }
    let records_path = match &cli.folder {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join("calls.jsonl")
        }
        None => cli.out.clone(),
    };
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&records_path)
        .with_context(|| format!("opening {}", records_path.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The media epoch an anchor in another process (`sim serve`), on this host or (with
    // SIM_MEDIA_EPOCH) on another, reads our stamps on.
    let epoch = loadgen::clock::media_epoch().map_err(|e| anyhow!(e))?;
    let endpoint = Endpoint {
        url: cli.signalling.clone(),
        addr: signalling_addr,
        roots,
    };
    let mut sink = Sink {
        out: &mut out,
        records: Vec::new(),
        ended: 0,
        total: cli.calls,
        tty: std::io::stderr().is_terminal(),
    };
    // This generator's own lateness, watched as it goes: a shard on an overloaded machine must
    // not pass or fail the network (it has no other component's counters to read).
    let monitor = loadgen::overload::Monitor::start(reports::Components::new)
        .context("starting the overload monitor")?;
    let talk = Duration::from_secs_f64(cli.duration.max(0.0));
    let interrupted = runtime.block_on(run_calls(
        cli.calls,
        Load {
            concurrency: cli.concurrency,
            ramp_per_second: cli.ramp,
        },
        |i, hangup| CallSpec {
            identity: CallIdentity {
                run: cli.run.clone(),
                call: format!("s{}-c{i:05}", shard.index),
                agent: format!("agent-{:04}", i % cli.concurrency.max(1)),
                scenario: "loadgen".into(),
                site: "loadgen".into(),
                profile: "external".into(),
                kind: CallKind::Inbound,
                shard,
            },
            signalling: Ok(endpoint.clone()),
            turn: turn.clone(),
            turn_username: username.clone(),
            turn_password: password.clone(),
            turn_realm: cli.realm.clone(),
            timeouts: Timeouts::default(),
            talk,
            dead_air: Duration::from_secs(5),
            codec: Codec::OPUS,
            epoch,
            ssrc: 0x3000_0000 | i,
            hangup: Some(hangup),
        },
        &mut sink,
    ));
    let own_lateness = monitor.finish();
    let mut records = std::mem::take(&mut sink.records);
    // Failures that began while this generator was late say so in their records, written again.
    if own_lateness.mark(&mut records) > 0 {
        reports::record::rewrite_records(&records_path, &records)
            .with_context(|| format!("writing {}", records_path.display()))?;
    }
    let summary = RunSummary::from_records(&records).map_err(|e| anyhow!("{e}"))?;
    let o = &summary.outcomes;
    let rate = summary.error_rate(0.95);
    println!(
        "{} calls: {} completed, {} failed, {} dropped; error rate {:.2} % (95 % interval {:.2}–{:.2} %){}; records in {}",
        o.attempts(),
        o.completed,
        o.failed,
        o.dropped,
        rate.rate * 100.0,
        rate.lower * 100.0,
        rate.upper * 100.0,
        if interrupted { ", interrupted" } else { "" },
        records_path.display()
    );
    let errors = o.errors();
    // The records' scenario, as `sim report` names a merge of them.
    let mut file = SummaryFile::new("loadgen", summary, cli.threshold / 100.0, 0.95, interrupted);
    file.own_lateness = own_lateness;
    file.settle_verdict();
    for note in file.terminal_notes(5) {
        println!("{note}");
    }
    if let Some(dir) = &cli.folder {
        let path = dir.join("summary.json");
        let text = serde_json::to_string_pretty(&file)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!(
            "verdict {}; run folder {} (sim report {} renders it)",
            file.verdict.as_str(),
            dir.display(),
            dir.display()
        );
    }
    Ok(if file.verdict == reports::Verdict::Invalid {
        Finished::Invalid
    } else if errors > 0 {
        Finished::Errors
    } else {
        Finished::Clean
    })
}

/// coturn's `use-auth-secret` credentials: username `expiry:user`, password
/// base64(HMAC-SHA1(secret, username)).
fn time_limited(secret: &str, user: &str, valid: Duration) -> Result<(String, String)> {
    let expiry = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs()
        + valid.as_secs();
    let username = format!("{expiry}:{user}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Ok((username, password))
}

struct Sink<'a> {
    out: &'a mut std::fs::File,
    /// Every record, for the overload marks at the end.
    records: Vec<CallRecord>,
    ended: u32,
    total: u32,
    tty: bool,
}

impl LoadEvents for Sink<'_> {
    fn started(&mut self) {}

    fn ended(&mut self, record: CallRecord) {
        if let Err(e) = append_record(self.out, &record) {
            eprintln!("writing a record: {e}");
        }
        self.ended += 1;
        let class = record
            .failure
            .as_ref()
            .map_or(String::new(), |f| format!(" ({})", f.class));
        let outcome = match record.outcome {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        };
        let line = format!(
            "[{}/{}] {} {outcome}{class}",
            self.ended, self.total, record.identity.call
        );
        if self.tty {
            eprint!("\r{line:<60}");
        } else {
            eprintln!("{line}");
        }
        self.records.push(record);
    }

    fn interrupted(&mut self) {
        eprintln!("\ninterrupted: no new calls, hanging up the live ones");
    }
}
