//! `sim sweep`: one scenario run at each value of one field, bisected near the knee, and the
//! capacity report (`sweep.json`, `sweep.html`, charts) of [`reports::capacity`].
//!
//! The field is named by its path in the scenario file (`agents.concurrency`,
//! `segment.hub-uplink-2m.rate`, `site.hq.share`): each point is the file with that one value
//! replaced (by `toml_edit`, so the rest of the file and its positions stay as written) and
//! parsed again, so that a value the scenario would refuse is refused with its position before
//! any call is placed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reports::capacity::{
    self, DEFAULT_MOS_TARGET, PointStatus, SWEEP_FILE_VERSION, SweepFile, SweepPoint,
};

use crate::run::{RunError, RunOptions};
use crate::scenario::Scenario;

/// The field to sweep and its range, from `--vary FIELD=FROM..TO` and `--step`.
#[derive(Debug, Clone, PartialEq)]
pub struct Vary {
    /// The field's path in the scenario file.
    pub field: String,
    /// First value.
    pub from: f64,
    /// Last value.
    pub to: f64,
    /// Step between grid values.
    pub step: f64,
    /// The unit the values are written with (`""`: a plain number).
    pub unit: String,
    /// Whether the values are whole numbers written as TOML integers.
    pub integer: bool,
}

/// How a sweep runs.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The sweep's folder.
    pub out: PathBuf,
    /// Calls per point (default: the scenario's, raised to what a clean point needs to prove
    /// its error rate below the threshold, and to the concurrency when that is swept).
    pub calls: Option<u32>,
    /// Talk time of each call (default: the scenario's).
    pub call_duration: Option<Duration>,
    /// The MOS p5 a point must keep.
    pub mos_target: f64,
    /// Bisection steps near the knee after the grid.
    pub refine: u32,
    /// Plain progress lines.
    pub plain_progress: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("sweep"),
            calls: None,
            call_duration: None,
            mos_target: DEFAULT_MOS_TARGET,
            refine: 3,
            plain_progress: false,
        }
    }
}

/// Why a sweep could not run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// `--vary` or `--step` is malformed.
    #[error("--vary: {0}")]
    Vary(String),
    /// The scenario refused a value.
    #[error("{field} = {value}: {errors}")]
    Value {
        /// The field.
        field: String,
        /// The value, as written.
        value: String,
        /// The scenario's errors, with positions.
        errors: crate::scenario::ScenarioErrors,
    },
    /// A point's run failed.
    #[error("{field} = {value}: {source}")]
    Run {
        /// The field.
        field: String,
        /// The value.
        value: String,
        /// The run's error.
        source: RunError,
    },
    /// A value asks for more calls at once than the scenario's ramp and talk time ever hold.
    #[error("{0}")]
    Unreachable(String),
    /// The sweep's files could not be written.
    #[error("writing {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The sweep that measures this machine's capacity, as the overload warning gives it (1,000
/// calls at the scenario's 20/s take 50 s to be up at once).
const MEASURE_MACHINE: &str = "sim sweep scenarios/capacity-200.toml --vary \
                               agents.concurrency=100..1000 --step 100 --duration 50s --machine";

/// Why `scenario`'s concurrency is never reached, if it is not: calls start at most `ramp` a
/// second and each talks `talk` (the sweep's `--duration`, else the scenario's), so no more than
/// ramp × talk are up at once (set-up time adds a little; it is not counted on).
fn unreachable(scenario: &Scenario, talk: Option<Duration>) -> Option<String> {
    let a = &scenario.agents;
    let talk = talk.unwrap_or(a.call_duration);
    let held = a.ramp_per_second * talk.as_secs_f64();
    let wanted = f64::from(a.concurrency);
    (held < wanted).then(|| {
        format!(
            "{} calls at once are never up: calls start at {}/s and talk {:.1} s, so about {:.0} \
             are up at once; give --duration {:.0}s or more, or raise agents.ramp",
            a.concurrency,
            a.ramp_per_second,
            talk.as_secs_f64(),
            held,
            (wanted / a.ramp_per_second).ceil()
        )
    })
}

/// A number and the unit written after it: `2.5Mbit` → (2.5, `Mbit`), `40` → (40, ``).
fn split_unit(s: &str) -> Result<(f64, String), String> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let number: f64 = s[..end]
        .parse()
        .map_err(|_| format!("{s:?} does not start with a number"))?;
    if !number.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    Ok((number, s[end..].trim().to_owned()))
}

impl Vary {
    /// Parses `FIELD=FROM..TO` and an optional step (`None`: ten points).
    pub fn parse(spec: &str, step: Option<&str>) -> Result<Self, SweepError> {
        let bad = |m: String| SweepError::Vary(m);
        let (field, range) = spec
            .split_once('=')
            .ok_or_else(|| bad(format!("{spec:?}: expected FIELD=FROM..TO")))?;
        let (from, to) = range
            .split_once("..")
            .ok_or_else(|| bad(format!("{range:?}: expected FROM..TO")))?;
        let (from, unit) = split_unit(from).map_err(bad)?;
        let (to, to_unit) = split_unit(to).map_err(bad)?;
        let field = field.trim().to_owned();
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(bad(format!("{field:?}: expected a field's dotted path")));
        }
        if unit != to_unit {
            return Err(bad(format!(
                "FROM and TO are written in different units ({unit:?}, {to_unit:?})"
            )));
        }
        if to <= from {
            return Err(bad(format!("TO ({to}) must be above FROM ({from})")));
        }
        let step = match step {
            Some(s) => {
                let (v, u) = split_unit(s).map_err(|e| bad(format!("--step: {e}")))?;
                if !u.is_empty() && u != unit {
                    return Err(bad(format!("--step is in {u:?}, the range in {unit:?}")));
                }
                if v <= 0.0 {
                    return Err(bad("--step must be above 0".into()));
                }
                v
            }
            None => (to - from) / 9.0,
        };
        let whole = |v: f64| v.fract() == 0.0;
        let integer = unit.is_empty() && whole(from) && whole(to) && whole(step);
        let step = if integer { step.max(1.0) } else { step };
        if (to - from) / step > 100.0 {
            return Err(bad(format!(
                "{} points: a sweep takes at most 100 (a larger --step)",
                ((to - from) / step) as u64 + 1
            )));
        }
        Ok(Self {
            field,
            from,
            to,
            step,
            unit,
            integer,
        })
    }

    /// The grid's values, FROM to TO by the step (TO always included).
    pub fn grid(&self) -> Vec<f64> {
        let mut values = Vec::new();
        let mut i = 0.0;
        loop {
            let v = self.round(self.from + i * self.step);
            if v >= self.to - self.step * 1e-9 {
                break;
            }
            values.push(v);
            i += 1.0;
        }
        values.push(self.to);
        values
    }

    /// `v` as the grid writes it: whole for integer fields, else three significant digits.
    fn round(&self, v: f64) -> f64 {
        if self.integer {
            v.round()
        } else if v == 0.0 {
            0.0
        } else {
            let scale = 10f64.powi(2 - v.abs().log10().floor() as i32);
            (v * scale).round() / scale
        }
    }

    /// `v` as written into the scenario.
    fn written(&self, v: f64) -> String {
        if self.integer {
            format!("{}", v as i64)
        } else {
            format!("{v}{}", self.unit)
        }
    }

    /// The scenario text with the field set to `v`.
    fn apply(&self, text: &str, v: f64) -> Result<String, SweepError> {
        let bad = |m: String| SweepError::Vary(format!("{}: {m}", self.field));
        let mut doc: toml_edit::DocumentMut = text
            .parse()
            .map_err(|e: toml_edit::TomlError| bad(e.to_string()))?;
        let parts: Vec<&str> = self.field.split('.').collect();
        let (last, path) = parts.split_last().ok_or_else(|| bad("empty".into()))?;
        let mut table: &mut dyn toml_edit::TableLike = doc.as_table_mut();
        let mut i = 0;
        while i < path.len() {
            let key = path[i];
            let item = table
                .get_mut(key)
                .ok_or_else(|| bad(format!("the scenario has no `{key}`")))?;
            if item.is_array_of_tables() {
                let array = item
                    .as_array_of_tables_mut()
                    .ok_or_else(|| bad(format!("`{key}` is not a list")))?;
                // `[[site]]` tables are named: `site.NAME.field`.
                let name = path
                    .get(i + 1)
                    .ok_or_else(|| bad(format!("`{key}` is a list: name one, {key}.NAME.…")))?;
                table = array
                    .iter_mut()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
                    .ok_or_else(|| bad(format!("no [[{key}]] is named {name:?}")))?;
                i += 2;
            } else {
                table = item
                    .as_table_like_mut()
                    .ok_or_else(|| bad(format!("`{key}` is not a table")))?;
                i += 1;
            }
        }
        let value = if self.integer {
            toml_edit::value(v as i64)
        } else if self.unit.is_empty() {
            toml_edit::value(v)
        } else {
            toml_edit::value(self.written(v))
        };
        table.insert(last, value);
        // A concurrency above the scenario's calls needs as many calls (each point places at
        // least that many anyway); the scenario would refuse it otherwise.
        if self.field == "agents.concurrency" {
            let calls = table.get("calls").and_then(toml_edit::Item::as_integer);
            if calls.is_some_and(|c| (c as f64) < v) {
                table.insert("calls", toml_edit::value(v as i64));
            }
        }
        Ok(doc.to_string())
    }
}

/// Runs the sweep of `scenario_path`'s scenario over `vary`, writing into `options.out` as it
/// goes (a sweep stopped part-way keeps the points it ran).
pub fn sweep(
    scenario_path: &Path,
    vary: &Vary,
    options: &SweepOptions,
) -> Result<SweepFile, SweepError> {
    let file = scenario_path.display().to_string();
    let text = std::fs::read_to_string(scenario_path).map_err(|e| SweepError::Write {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let stem = scenario_path
        .file_stem()
        .map_or("scenario".into(), |s| s.to_string_lossy().into_owned());
    let parse = |v: f64| -> Result<Scenario, SweepError> {
        let edited = vary.apply(&text, v)?;
        Scenario::parse(&file, &stem, &edited).map_err(|errors| SweepError::Value {
            field: vary.field.clone(),
            value: vary.written(v),
            errors,
        })
    };
    // Every value of the grid is checked before the first call.
    let grid = vary.grid();
    let scenarios = grid
        .iter()
        .map(|&v| parse(v))
        .collect::<Result<Vec<_>, _>>()?;
    // The largest value first: its remedy covers the others.
    for (v, scenario) in grid.iter().zip(&scenarios).rev() {
        if let Some(why) = unreachable(scenario, options.call_duration) {
            let why = format!("{} = {}: {why}", vary.field, vary.written(*v));
            // A concurrency sweep whose points never reach their value measures the ramp.
            if vary.field == "agents.concurrency" {
                return Err(SweepError::Unreachable(why));
            }
            eprintln!("warning: {why}");
            break;
        }
    }
    let first = &scenarios[0];
    let needed = capacity::calls_to_prove(first.threshold, first.confidence);
    let base_calls = options.calls.unwrap_or_else(|| {
        first
            .agents
            .calls
            .max(u32::try_from(needed).unwrap_or(u32::MAX))
    });
    let mut sweep = SweepFile {
        schema_version: SWEEP_FILE_VERSION,
        scenario: first.name.clone(),
        field: vary.field.clone(),
        unit: vary.unit.clone(),
        threshold: first.threshold,
        mos_target: options.mos_target,
        calls_per_point: base_calls,
        points: Vec::new(),
        knee: None,
        answer: String::new(),
    };
    let total = grid.len() + options.refine as usize;
    let run_point = |sweep: &mut SweepFile, v: f64, scenario: &Scenario, refined: bool| {
        let written = vary.written(v);
        let run = format!("points/{}", written.replace(['/', ' '], "_"));
        // The concurrency is only reached with at least that many calls.
        let calls = if vary.field == "agents.concurrency" {
            base_calls.max(scenario.agents.concurrency)
        } else {
            base_calls
        };
        println!(
            "point {}/{total}{}: {} = {written}, {calls} calls",
            sweep.points.len() + 1,
            if refined { " (bisection)" } else { "" },
            vary.field
        );
        let outcome = crate::run::run(
            scenario,
            &RunOptions {
                out: Some(options.out.join(&run)),
                seed: None,
                calls: Some(calls),
                call_duration: options.call_duration,
                plain_progress: options.plain_progress,
                threads: None,
            },
        )
        .map_err(|source| SweepError::Run {
            field: vary.field.clone(),
            value: written.clone(),
            source,
        })?;
        let mut point = SweepPoint::new(v, written, run, &outcome.summary, options.mos_target);
        point.refined = refined;
        println!(
            "  → {}",
            match point.status {
                PointStatus::Good => "carries calls".to_owned(),
                _ => point.why(sweep.threshold, sweep.mos_target),
            }
        );
        sweep.points.push(point);
        sweep.points.sort_by(|a, b| a.value.total_cmp(&b.value));
        finish(sweep);
        write(&options.out, sweep)
    };
    for (v, scenario) in grid.iter().zip(&scenarios) {
        run_point(&mut sweep, *v, scenario, false)?;
    }
    for _ in 0..options.refine {
        let Some((good, bad)) = capacity::knee_bracket(&sweep.points) else {
            break;
        };
        let mid = vary.round((good + bad) / 2.0);
        if mid == good || mid == bad || sweep.points.iter().any(|p| p.value == mid) {
            break;
        }
        let scenario = parse(mid)?;
        run_point(&mut sweep, mid, &scenario, true)?;
    }
    Ok(sweep)
}

/// Settles the knee and the answer of `sweep`'s points.
fn finish(sweep: &mut SweepFile) {
    sweep.knee = capacity::knee(&sweep.points, sweep.threshold, sweep.mos_target);
    sweep.answer = capacity::answer(sweep);
}

/// Writes `sweep.json`, `sweep.html` and the charts into `out`.
pub fn write(out: &Path, sweep: &SweepFile) -> Result<(), SweepError> {
    let err = |path: &Path, e: &dyn std::fmt::Display| SweepError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(out).map_err(|e| err(out, &e))?;
    let json = serde_json::to_string_pretty(sweep).map_err(|e| err(out, &e))?;
    std::fs::write(out.join("sweep.json"), json).map_err(|e| err(&out.join("sweep.json"), &e))?;
    let charts = reports::charts::sweep_charts(sweep).map_err(|e| err(out, &e))?;
    crate::report::write_charts(&out.join("charts"), &charts).map_err(|e| err(out, &e))?;
    let html = reports::html::sweep_html(sweep, &charts);
    std::fs::write(out.join("sweep.html"), html).map_err(|e| err(&out.join("sweep.html"), &e))
}

/// What a sweep of the simulator itself found this machine holds (`sim sweep --machine`),
/// kept for `sim run`'s warning before it places more calls at once than that.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineCapacity {
    /// [`MACHINE_FILE_VERSION`].
    pub schema_version: u32,
    /// Concurrent calls the machine held with its own components on time (the sweep's knee).
    pub concurrent_calls: u32,
    /// The first concurrency that did not hold, and why.
    pub next: Option<(String, String)>,
    /// When it was measured, ms since the Unix epoch.
    pub measured_unix_ms: u64,
    /// The scenario swept.
    pub scenario: String,
    /// Cores available then.
    pub cores: usize,
    /// `release` or `debug`: a debug build holds far fewer calls.
    pub build: String,
}

/// Version of the machine capacity file.
pub const MACHINE_FILE_VERSION: u32 = 1;

impl MachineCapacity {
    /// Where it is kept: `$SIM_MACHINE_FILE`, else `$XDG_CACHE_HOME/softphone-sim/machine.json`,
    /// else `~/.cache/softphone-sim/machine.json`.
    pub fn path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("SIM_MACHINE_FILE") {
            return Some(PathBuf::from(p));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(cache.join("softphone-sim").join("machine.json"))
    }

    /// The stored capacity of this machine, if measured (a file of another version or
    /// damaged reads as not measured).
    pub fn load() -> Option<Self> {
        let text = std::fs::read_to_string(Self::path()?).ok()?;
        serde_json::from_str::<Self>(&text)
            .ok()
            .filter(|m| m.schema_version == MACHINE_FILE_VERSION)
    }

    /// The capacity a concurrency sweep found, when it found a knee.
    pub fn from_sweep(sweep: &SweepFile) -> Option<Self> {
        let knee = sweep.knee.as_ref()?;
        Some(Self {
            schema_version: MACHINE_FILE_VERSION,
            concurrent_calls: knee.value as u32,
            next: knee.next.clone(),
            measured_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            scenario: sweep.scenario.clone(),
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
        })
    }

    /// Writes it to [`MachineCapacity::path`].
    pub fn store(&self) -> Result<PathBuf, SweepError> {
        let path = Self::path().ok_or_else(|| SweepError::Write {
            path: "machine.json".into(),
            message: "no HOME, XDG_CACHE_HOME or SIM_MACHINE_FILE to keep it in".into(),
        })?;
        let err = |e: &dyn std::fmt::Display| SweepError::Write {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let json = serde_json::to_string_pretty(self).map_err(|e| err(&e))?;
        std::fs::write(&path, json).map_err(|e| err(&e))?;
        Ok(path)
    }

    /// What `sim run` says before a scenario of `concurrency` calls at once, when that is more
    /// than the machine holds (`None`: it fits, or nothing was measured and it is modest).
    pub fn warning(stored: Option<&Self>, concurrency: u32) -> Option<String> {
        match stored {
            Some(m) if concurrency > m.concurrent_calls => {
                let machines = concurrency.div_ceil(m.concurrent_calls.max(1));
                Some(format!(
                    "this scenario places {concurrency} calls at once; this machine held {} \
                     ({} build, {} cores, measured by `sim sweep --machine`). Past that its \
                     own components fall behind and the run will be invalid. Shard it over {machines} \
                     machines: `sim serve` on one, `loadgen --shard I/{machines}` on each (README, \
                     \"loadgen alone\"; on Kubernetes, docs/kubernetes.md).",
                    m.concurrent_calls, m.build, m.cores
                ))
            }
            None if concurrency > 200 => Some(format!(
                "this scenario places {concurrency} calls at once, and this machine's capacity \
                 was never measured; measure it first: {MEASURE_MACHINE}"
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concurrency_the_ramp_and_talk_time_never_reach_is_named() {
        let text = "[run]\nseed = 1\n[agents]\ncalls = 200\nconcurrency = 100\nramp = \"10/s\"\n\
                    call_duration = \"20s\"\n[turn]\nurls = [\"turn:turn.sim.local:3478\"]\n\
                    [[site]]\nname = \"hq\"\npath = [\"office-lan\"]\n";
        let scenario = Scenario::parse("t.toml", "t", text).unwrap();
        assert_eq!(unreachable(&scenario, None), None, "10/s × 20 s holds 200");
        // The machine sweep the overload warning recommends reaches every value it asks for.
        let words: Vec<&str> = MEASURE_MACHINE.split_whitespace().collect();
        let after = |flag: &str| words[words.iter().position(|w| *w == flag).unwrap() + 1];
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(words[2]);
        let shipped = std::fs::read_to_string(&shipped).unwrap();
        let vary = Vary::parse(after("--vary"), Some(after("--step"))).unwrap();
        let talk = crate::scenario::parse_duration(after("--duration")).unwrap();
        for v in vary.grid() {
            let s = Scenario::parse("c.toml", "c", &vary.apply(&shipped, v).unwrap()).unwrap();
            assert_eq!(
                unreachable(&s, Some(talk)),
                None,
                "{MEASURE_MACHINE} at {v}"
            );
        }
        // Past the scenario's calls, the calls rise with it.
        let vary = Vary::parse("agents.concurrency=100..300", Some("100")).unwrap();
        let edited = Scenario::parse("t.toml", "t", &vary.apply(text, 300.0).unwrap()).unwrap();
        assert_eq!((edited.agents.concurrency, edited.agents.calls), (300, 300));
        let why = unreachable(&scenario, Some(Duration::from_secs(5))).unwrap();
        assert!(
            why.contains("about 50") && why.contains("--duration 10s"),
            "{why}"
        );
    }

    #[test]
    fn a_range_is_read_with_its_unit_and_gives_its_grid() {
        let v = Vary::parse("agents.concurrency=10..50", Some("10")).unwrap();
        assert!(v.integer);
        assert_eq!(v.grid(), [10.0, 20.0, 30.0, 40.0, 50.0]);
        let r = Vary::parse("segment.wan.rate=1Mbit..2Mbit", Some("0.3Mbit")).unwrap();
        assert_eq!((r.unit.as_str(), r.integer), ("Mbit", false));
        assert_eq!(r.grid(), [1.0, 1.3, 1.6, 1.9, 2.0]);
        assert_eq!(r.written(1.3), "1.3Mbit");
        // Ten points by default.
        assert_eq!(
            Vary::parse("segment.wan.loss=0%..9%", None)
                .unwrap()
                .grid()
                .len(),
            10
        );
        for (spec, step, why) in [
            ("agents.concurrency", None, "FIELD=FROM..TO"),
            ("agents.concurrency=50..10", None, "must be above"),
            ("segment.wan.rate=1Mbit..2kbit", None, "different units"),
            ("segment.wan.rate=1Mbit..2Mbit", Some("1ms"), "--step is in"),
            ("agents.concurrency=1..1000", Some("1"), "at most 100"),
            ("agents..x=1..2", None, "dotted path"),
        ] {
            let e = Vary::parse(spec, step).unwrap_err().to_string();
            assert!(e.contains(why), "{spec}: {e}");
        }
    }

    #[test]
    fn a_value_replaces_the_field_in_place_in_a_table_or_a_named_site() {
        let text = "[agents]\nconcurrency = 5 # the agents\n\n[[site]]\nname = \"a\"\nshare = 0.5\n\n[[site]]\nname = \"b\"\nshare = 0.5\n";
        let c = Vary::parse("agents.concurrency=5..10", None).unwrap();
        let out = c.apply(text, 7.0).unwrap();
        assert!(out.contains("concurrency = 7"), "{out}");
        let s = Vary::parse("site.b.share=0.1..0.9", None).unwrap();
        let out = s.apply(text, 0.3).unwrap();
        assert!(out.contains("name = \"b\"\nshare = 0.3"), "{out}");
        assert!(out.contains("name = \"a\"\nshare = 0.5"), "{out}");
        let e = Vary::parse("segment.wan.rate=1Mbit..2Mbit", None)
            .unwrap()
            .apply(text, 1.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the scenario has no `segment`"), "{e}");
        let e = Vary::parse("site.c.share=0.1..0.9", None)
            .unwrap()
            .apply(text, 0.3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [[site]] is named \"c\""), "{e}");
    }

    #[test]
    fn the_warning_comes_past_the_measured_capacity_and_says_how_to_shard() {
        let m = MachineCapacity {
            schema_version: MACHINE_FILE_VERSION,
            concurrent_calls: 300,
            next: None,
            measured_unix_ms: 0,
            scenario: "capacity-200".into(),
            cores: 2,
            build: "release".into(),
        };
        assert_eq!(MachineCapacity::warning(Some(&m), 300), None);
        let w = MachineCapacity::warning(Some(&m), 700).unwrap();
        assert!(
            w.contains("700 calls at once; this machine held 300"),
            "{w}"
        );
        assert!(w.contains("loadgen --shard I/3"), "{w}");
        assert_eq!(MachineCapacity::warning(None, 200), None);
        let w = MachineCapacity::warning(None, 1_000).unwrap();
        assert!(
            w.contains("never measured") && w.contains("--machine"),
            "{w}"
        );
    }
}
