//! `sim run --virtual-time`: a scenario's calls on the simulated clock ([`super::run_plan`]),
//! written as the same run folder a real-time run writes (`calls.jsonl`, `summary.json`,
//! `calls.csv`, `junit.xml`, `summary.md`, `report.html` and its charts).
//!
//! Deterministic: the same scenario and seed give byte-identical files. Their wall-clock
//! fields count from [`VIRTUAL_EPOCH_UNIX`], not from when the run was made, and each call's
//! run id is the scenario's name and seed (a real-time run names its calls by its folder), so
//! two runs into two folders still agree byte for byte.
//!
//! Every call kind runs, as the real-time agents run it (the session and the anchor's call
//! handling are the same cores), and so does every site policy (blocked ports, DNS, a
//! stateless firewall, a TLS-inspecting proxy that breaks upgrades, stalls connections or
//! resets them when its certificate cache expires), TURN over UDP, TCP and TLS on any number
//! of nodes, the nodes' faults, and the anchor's recordings (written as the run goes, so a
//! seed gives the same WAV files too).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use loadgen::session::Timeouts;
use reports::emodel::Codec as EModelCodec;
use reports::{CallIdentity, CallRecord, Shard};

use super::{CallEvent, Plan, PlannedCall, PlannedSite, run_plan};
use crate::anchor::recording::{RECORDINGS, Recording};
use crate::run::{RunError, RunOptions, RunOutcome, plan_calls, summarise, write_outputs};
use crate::scenario::{Codec, Scenario};

/// The simulated clock's wall-clock start: 2026-01-01T00:00:00Z. Every `started_unix_ms`
/// counts from it.
pub const VIRTUAL_EPOCH_UNIX: Duration = Duration::from_secs(1_767_225_600);

/// Runs `scenario` in virtual time and writes its run folder.
///
/// # Errors
/// [`RunError::Io`] when the folder cannot be written.
pub fn run(scenario: &Scenario, options: &RunOptions) -> Result<RunOutcome, RunError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    let calls = options.calls.unwrap_or(scenario.agents.calls);
    let talk = options
        .call_duration
        .unwrap_or(scenario.agents.call_duration);
    let dir = options.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!(
            "{}-virtual-{}",
            scenario.name,
            crate::run::utc_now_stamp()
        ))
    });
    let planned = plan_calls(scenario, seed, calls);
    let codec = match scenario.agents.codec {
        Codec::Opus => EModelCodec::OPUS,
        Codec::G711 => EModelCodec::G711_PLC,
    };
    let t = &scenario.agents.timeouts;
    let run_id = format!("{}-seed{seed}-virtual", scenario.name);
    let calls_planned = planned
        .iter()
        .map(|p| {
            let site = &scenario.sites[p.site];
            PlannedCall {
                site: p.site,
                identity: CallIdentity {
                    run: run_id.clone(),
                    call: format!("c{:05}", p.index),
                    agent: format!("agent-{:04}", p.index % scenario.agents.concurrency.max(1)),
                    scenario: scenario.name.clone(),
                    site: site.name.clone(),
                    profile: site.profile.clone(),
                    kind: p.kind,
                    shard: Shard::WHOLE,
                },
            }
        })
        .collect();
    let plan = Plan {
        sites: scenario
            .sites
            .iter()
            .map(|s| PlannedSite {
                name: s.name.clone(),
                path: s.path.clone(),
                policy: s.policy.clone(),
            })
            .collect(),
        calls: calls_planned,
        signalling_url: scenario.signalling_url.clone(),
        turn: scenario.turn.urls.clone(),
        turn_nodes: scenario.turn.nodes,
        faults: scenario.faults.clone(),
        anchor: crate::anchor::AnchorBehaviour::Answer,
        recording: scenario.recording.map(|sides| Recording {
            dir: dir.join(RECORDINGS),
            sides,
        }),
        concurrency: scenario.agents.concurrency,
        ramp_per_second: scenario.agents.ramp_per_second,
        talk,
        timeouts: Timeouts {
            websocket_connect: t.websocket_connect,
            ice_collection: t.ice_collection,
            invite_answer: t.invite_answer,
            ack: t.ack,
            keepalive: t.keepalive,
            ..Timeouts::default()
        },
        dead_air: scenario.agents.dead_air,
        codec,
        seed,
        threads: options.threads.unwrap_or(1),
    };
    let mut progress = crate::run::Progress::new(u64::from(calls), options.plain_progress);
    // Moved to the loop's thread for the run (the loop may run on a pool's).
    let shown = &mut progress;
    let result = run_plan(
        &plan,
        simulated_start(),
        VIRTUAL_EPOCH_UNIX,
        &mut move |event| match event {
            CallEvent::Started(_) => shown.call_started(),
            CallEvent::Ended(_, r) => {
                shown.ended(r.outcome, r.failure.as_ref().map(|f| f.class));
            }
            CallEvent::Clock(at) => shown.simulated(at),
        },
    );
    progress.finish();
    // The TURN core, the endpoint or the anchor could not be made (a bad URL, a key).
    let result = result.map_err(|e| RunError::Io {
        what: "starting virtual time".into(),
        source: std::io::Error::other(e),
    })?;

    let mut records: Vec<(Duration, CallRecord)> = result
        .calls
        .into_iter()
        .map(|mut r| {
            if scenario.recording.is_some() {
                crate::run::mark_recording(&mut r.record);
            }
            (r.ended, r.record)
        })
        .collect();
    // In the order the calls ended, as a real-time run appends them.
    records.sort_by_key(|(ended, r)| (*ended, r.identity.call.clone()));
    let records: Vec<CallRecord> = records.into_iter().map(|(_, r)| r).collect();

    std::fs::create_dir_all(&dir).map_err(|source| RunError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let mut file = summarise(scenario, &records, false);
    file.components = result.components;
    file.settle_verdict();
    crate::report::copy_records(&records, &dir).map_err(|e| RunError::Io {
        what: "writing calls.jsonl".into(),
        source: std::io::Error::other(e),
    })?;
    write_outputs(&dir, &records, &file)?;
    Ok(RunOutcome { dir, summary: file })
}

/// The instant the simulated clock starts from. Any instant will do — nothing in virtual time
/// reads the real clock, and every figure counts from this one — but `Instant` has no constant.
#[allow(clippy::disallowed_methods)] // one real instant as the simulated clock's origin
fn simulated_start() -> Instant {
    Instant::now()
}
