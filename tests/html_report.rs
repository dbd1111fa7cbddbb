//! The HTML report of a comparison and the SVG picture of one translation: built through the
//! library from a real run, checked as text, then loaded in headless Chromium when it is
//! installed (in CI, where `CI=true`, it must be).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use memvirt::report::{comparison_html, explanation_svg};
use memvirt::sim::compare::{compare, Comparison};
use memvirt::sim::{ExplainTarget, ModeName, SimConfig};
use memvirt::workload::scenario::{self, ScenarioContext};
use memvirt::workload::Workload;

const ALL: [ModeName; 4] = [ModeName::Native, ModeName::Shadow, ModeName::Ept, ModeName::Npt];
const IDS: [&str; 6] =
    ["summary-table", "chart-cycles", "chart-exits", "picture-native", "picture-shadow", "picture-nested"];
const SVG_NS: &str = "xmlns=\"http://www.w3.org/2000/svg\"";

/// seq-scan over 1 MiB in every mode, explaining the first access with every walk cold.
fn run(explain: Option<ExplainTarget>) -> (Comparison, serde_json::Value, SimConfig) {
    let config = SimConfig { walk_caches: false, verify: true, explain, ..SimConfig::default() };
    let params: BTreeMap<String, String> = [("size".to_string(), "1M".to_string())].into();
    let context = ScenarioContext { seed: config.seed, page_size: config.guest_page_size };
    let factory = || -> Result<Box<dyn Workload>, memvirt::workload::WorkloadError> {
        scenario::build("seq-scan", &params, &context)
    };
    let progress: Vec<AtomicU64> = ALL.iter().map(|_| AtomicU64::new(0)).collect();
    let comparison = compare(&ALL, &config, &factory, &progress).expect("the comparison runs");
    let workload = serde_json::json!({ "name": "seq-scan", "params": params, "seed": config.seed });
    (comparison, workload, config)
}

/// A fresh directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("memvirt-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where `chromium` is on PATH, if it is.
fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("chromium")).find(|candidate| candidate.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// Loads `page` in headless Chromium and returns the DOM it built.
fn dump_dom(chromium: &Path, page: &Path, scratch: &Path) -> String {
    let profile = scratch.join("chromium-profile");
    let (dom_path, log_path) = (scratch.join("dom.html"), scratch.join("chromium.log"));
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_path).expect("the DOM file"))
        .stderr(std::fs::File::create(&log_path).expect("the log file"))
        .spawn()
        .expect("chromium starts");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within 120 s; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&dom_path).unwrap_or_default();
    assert!(
        status.success() && !dom.is_empty(),
        "chromium failed ({status}); its log:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    dom
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_chromium() {
    let (comparison, workload, config) = run(Some(ExplainTarget::FirstAccess));
    assert!(comparison.verified, "the run itself verifies");
    let html = comparison_html(&comparison, &workload, &config);

    for id in IDS {
        assert!(html.contains(&format!("id=\"{id}\"")), "the page has id={id}");
    }
    assert!(html.contains("builtin scenario seq-scan (size=1M), seed 1"), "the workload is described");
    assert!(html.contains("Verified:"), "the page says the run was verified");
    for mode in ALL {
        assert!(html.contains(&format!("<th>{mode}</th>")), "the table has a column for {mode}");
    }
    assert!(html.contains("refs per walk (max)"), "the table reuses the text table's rows");
    // The three pictures and their reference counts: 4 for a 1D walk, 24 for a cold 4x4 2D walk.
    let section = |id: &str| -> &str {
        let start = html.find(&format!("id=\"{id}\"")).expect("the section");
        let end = html[start..].find("</figure>").map_or(html.len(), |end| start + end);
        &html[start..end]
    };
    assert!(section("picture-native").contains("4 memory references"));
    assert!(section("picture-shadow").contains("4 memory references by the processor"));
    assert!(section("picture-shadow").contains("write-protected"));
    assert!(section("picture-nested").contains("24 memory references"));
    assert!(section("picture-nested").contains("(4 + 1) x (4 + 1) - 1"));
    for id in ["chart-cycles", "chart-exits", "picture-native", "picture-shadow", "picture-nested"] {
        assert!(section(id).contains("<svg"), "{id} holds an inline SVG");
    }
    // Self-contained: no address on the network but the SVG namespace name, no scripts, no
    // external stylesheets.
    let without_namespace = html.replace(SVG_NS, "");
    for forbidden in ["http://", "https://", "<script", "<link", "@import", "<img", "<iframe"] {
        assert!(!without_namespace.contains(forbidden), "the page contains {forbidden}");
    }
    assert_eq!(html.matches("url(").count(), html.matches("url(#").count(), "only local url(#id) references");

    let scratch = TempDir::new("html-report");
    let page = scratch.0.join("report.html");
    std::fs::write(&page, &html).expect("the page is written");
    let Some(chromium) = find_chromium() else {
        assert!(!in_ci(), "CI=true but chromium is not on PATH: .ci/run should have installed it");
        eprintln!("note: chromium is not on PATH; skipping the headless-browser part of this test");
        return;
    };
    let started = Instant::now();
    let dom = dump_dom(&chromium, &page, &scratch.0);
    eprintln!("chromium loaded the page in {:.1} s", started.elapsed().as_secs_f64());
    for id in IDS {
        assert!(dom.contains(&format!("id=\"{id}\"")), "the rendered DOM has id={id}");
    }
    assert!(dom.contains("<table id=\"summary-table\">"), "the table survived parsing");
    assert!(dom.contains("<tbody>") && dom.contains("estimated cycles"));
    assert!(dom.matches("<svg").count() >= 5, "two charts and three pictures in the DOM");
    assert!(dom.contains("24 memory references"));
    assert!(dom.contains("</html>"));
}

#[test]
fn each_mode_explanation_is_a_standalone_svg() {
    let (comparison, _, _) = run(Some(ExplainTarget::FirstAccess));
    for report in &comparison.reports {
        let e = report.explanation.as_ref().expect("every mode explains the first access");
        let svg = explanation_svg(e);
        assert!(svg.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg "), "{}", report.mode);
        assert!(svg.contains(SVG_NS) && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        let expected = if matches!(report.mode, ModeName::Ept | ModeName::Npt) { 24 } else { 4 };
        assert!(svg.contains(&format!("{expected} memory references")), "{}: {svg}", report.mode);
        // Every reference drawn, numbered in walk order.
        assert!(svg.contains(&format!(">{expected}</text>")), "{}", report.mode);
    }
}

#[test]
fn missing_explanations_and_awkward_text_give_notes_not_panics() {
    let (comparison, _, config) = run(None);
    let workload = serde_json::json!({ "trace": "/tmp/<b>\"odd\" & 'name'.lackey" });
    let html = comparison_html(&comparison, &workload, &config);
    for id in IDS {
        assert!(html.contains(&format!("id=\"{id}\"")), "the page has id={id} even without pictures");
    }
    assert!(html.contains("explained no translation"));
    assert!(html.contains("/tmp/&lt;b&gt;&quot;odd&quot; &amp; &#39;name&#39;.lackey"));
    assert!(!html.contains("<b>\"odd\""));
    let empty =
        Comparison { reports: Vec::new(), verify: false, verified: true, mismatch: None, interrupted: false };
    let html = comparison_html(&empty, &serde_json::Value::Null, &config);
    assert!(html.contains("not part of this comparison") && html.contains("Not verified"));
}
