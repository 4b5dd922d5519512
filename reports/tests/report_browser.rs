//! `report.html` opened in headless Chromium (Debian's `chromium`, installed when missing): the
//! page loads with no console message and makes no request beyond itself (served by a test HTTP
//! server that counts requests, with Chromium's NetLog listing every URL it fetched), every
//! chart is on the page, the verdict is visible at the top, and a screenshot is left in
//! `target/test-output/report-browser/report.png` for a person to look at.
#![allow(clippy::disallowed_methods)] // real processes, real clock

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reports::RunSummary;
use reports::charts::charts;
use reports::html::report_html;
use reports::output::SummaryFile;
use reports::record::read_records;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Serves `page` at `/report.html` on loopback; every request's path is recorded.
fn serve(page: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/report.html", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            // Chromium opens spare connections it may never use: only a request line counts.
            if reader.read_line(&mut request).is_err() || request.trim().is_empty() {
                continue;
            }
            // Drain the headers.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            log.lock().unwrap().push(path.clone());
            let (status, body) = if path == "/report.html" {
                ("200 OK", page.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

/// Runs Chromium headless with `args` and `url`; returns (stdout, stderr). Bounded: killed
/// after 60 s whatever happens.
fn chromium(profile: &Path, args: &[String], url: &str) -> (String, String) {
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    (out.join().unwrap(), err.join().unwrap())
}

/// The URLs a page asked for, from a Chromium NetLog: requests whose initiator is an origin.
/// The browser's own traffic (its updater, clock, accounts) and the navigation to the page are
/// initiated by no origin.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text =
        std::fs::read_to_string(netlog).unwrap_or_else(|e| panic!("{}: {e}", netlog.display()));
    let log: serde_json::Value = serde_json::from_str(&text).unwrap();
    let start_job = &log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"];
    assert!(start_job.is_number(), "unexpected NetLog layout");
    let mut urls: Vec<String> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| &e["type"] == start_job)
        .filter(|e| {
            e["params"]["initiator"]
                .as_str()
                .is_some_and(|i| i != "not an origin")
        })
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_owned))
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

/// Loads `page` over HTTP with a NetLog; returns the dumped DOM, the browser's log, the paths
/// our server was asked for and the URLs the page requested.
fn load(page: &str, out: &Path, tag: &str) -> (String, String, Vec<String>, Vec<String>) {
    let (url, seen) = serve(page.to_owned());
    let netlog = out.join(format!("netlog-{tag}.json"));
    let (dom, log) = chromium(
        &out.join(format!("profile-{tag}")),
        &[
            format!("--log-net-log={}", netlog.display()),
            "--dump-dom".to_owned(),
        ],
        &url,
    );
    let served = seen.lock().unwrap().clone();
    (dom, log, served, page_requests(&netlog))
}

/// The instrumented copy's check, run in the page: what a reader would see.
const CHECK: &str = r#"<script>
addEventListener('load', () => {
  const v = document.getElementById('verdict');
  const r = v.getBoundingClientRect();
  const s = getComputedStyle(v);
  const word = v.querySelector('.word');
  console.log('RESULT ' + JSON.stringify({
    charts: [...document.querySelectorAll('figure.chart')].map((f) => f.id),
    svgs: document.querySelectorAll('figure.chart svg').length,
    chartHeights: [...document.querySelectorAll('figure.chart svg')]
      .map((e) => Math.round(e.getBoundingClientRect().height)),
    verdictWord: word.innerText,
    verdictText: v.innerText,
    verdictTop: r.top, verdictHeight: r.height, viewport: innerHeight,
    visible: s.display !== 'none' && s.visibility === 'visible' && s.opacity === '1',
    wordColour: getComputedStyle(word).color,
  }));
  window.close();
});
</script>"#;

#[test]
fn report_opens_in_chromium_without_requests_and_shows_everything() {
    if !support::debian_tool(CHROMIUM, "chromium") {
        return;
    }
    let records = read_records(&support::golden_dir().join("calls.jsonl"))
        .unwrap()
        .records;
    let summary = RunSummary::from_records(&records).unwrap();
    let file = SummaryFile::new("fixture", summary, 0.02, 0.95, false);
    let charts = charts(&file, &records).unwrap();
    let html = report_html(&file, &records, &charts);
    let out: PathBuf = support::output_dir("report-browser");
    std::fs::write(out.join("report.html"), &html).unwrap();

    // 0. The method sees requests: a page with a same-origin stylesheet and a picture from
    // elsewhere (a closed loopback port) is caught by both the server and the NetLog.
    let (_, _, served, requested) = load(
        "<!doctype html><link rel=\"stylesheet\" href=\"/style.css\">\
         <img src=\"http://127.0.0.2:9/pixel.png\">",
        &out,
        "control",
    );
    assert!(served.contains(&"/style.css".to_owned()), "{served:?}");
    assert!(
        requested.iter().any(|u| u.ends_with("/style.css"))
            && requested
                .iter()
                .any(|u| u.starts_with("http://127.0.0.2:9/")),
        "the NetLog check misses requests: {requested:?}"
    );

    // 1. The page as written, over HTTP: no console message, nothing fetched but the page.
    let (dom, log, served, requested) = load(&html, &out, "report");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(
        console.is_empty(),
        "console messages:\n{}",
        console.join("\n")
    );
    assert_eq!(served, ["/report.html"], "requests to the server");
    assert!(
        requested.is_empty(),
        "the page made requests beyond itself: {requested:?}"
    );
    // The DOM as loaded: every chart, inline.
    assert!(
        dom.contains("id=\"verdict\""),
        "no verdict in the DOM:\n{dom}"
    );
    for c in &charts {
        assert!(
            dom.contains(&format!("id=\"chart-{}\"", c.id)),
            "chart {} missing",
            c.id
        );
    }
    assert_eq!(dom.matches("<svg class=\"chart\"").count(), charts.len());

    // 2. A copy with a check script (the page itself forbids scripts): what is laid out.
    let checked = html
        .replace(
            "default-src 'none'; ",
            "default-src 'none'; script-src 'unsafe-inline'; ",
        )
        .replace("</body>", &format!("{CHECK}</body>"));
    std::fs::write(out.join("checked.html"), checked).unwrap();
    let (_, log) = chromium(
        &out.join("profile-2"),
        &["--window-size=1200,900".to_owned()],
        &format!("file://{}", out.join("checked.html").display()),
    );
    let line = log
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_owned()))
        .unwrap_or_else(|| panic!("no RESULT from the page; browser log:\n{log}"));
    let json_end = line.rfind('}').map_or(line.len(), |i| i + 1);
    let seen: serde_json::Value = serde_json::from_str(&line[..json_end]).unwrap();
    println!("{}", serde_json::to_string_pretty(&seen).unwrap());
    let ids: Vec<String> = charts.iter().map(|c| format!("chart-{}", c.id)).collect();
    assert_eq!(seen["charts"], serde_json::json!(ids));
    assert_eq!(seen["svgs"], charts.len());
    assert!(
        seen["chartHeights"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h.as_f64().unwrap() > 150.0),
        "a chart is collapsed: {}",
        seen["chartHeights"]
    );
    assert_eq!(seen["verdictWord"], "FAIL");
    assert!(
        seen["verdictText"]
            .as_str()
            .unwrap()
            .contains("The network does not carry calls reliably enough."),
        "{}",
        seen["verdictText"]
    );
    assert_eq!(seen["visible"], true);
    // In the first screen, without scrolling.
    let top = seen["verdictTop"].as_f64().unwrap();
    let bottom = top + seen["verdictHeight"].as_f64().unwrap();
    assert!(
        top >= 0.0 && bottom <= seen["viewport"].as_f64().unwrap(),
        "the verdict is not in the first screen: {top}–{bottom}"
    );

    // 3. A screenshot of the page as written, for a person.
    let png = out.join("report.png");
    let _ = chromium(
        &out.join("profile-3"),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,2400".to_owned(),
        ],
        &format!("file://{}", out.join("report.html").display()),
    );
    let bytes = std::fs::read(&png).unwrap_or_default();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 50_000,
        "no screenshot at {}",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
}
