//! The appliance as Prometheus sees it: `/metrics` on the plaintext `[metrics] listen` port
//! parses with Prometheus' own tools (`promtool check metrics`, Python's
//! `prometheus_client.parser`) and follows the naming conventions; the alert rules and scrape
//! config in ops/prometheus/ pass `promtool`, and every metric their expressions name is one a
//! running appliance exports.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hsm_ca::client::{self, WorkloadKey};
use hsm_ca::issuance::pb::IstioCertificateRequest;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use support::appliance::Appliance;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `GET path` over plain HTTP/1.1: status and body.
async fn get_plain(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

/// Runs `program args`, with `stdin` as its input; returns whether it succeeded and its output.
fn run(program: &str, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (ops/install-deps.sh installs it): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The sample names in a scrape (histograms' `_bucket`, `_sum` and `_count` included).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split(['{', ' '])
                .next()
                .expect("a sample line starts with its name")
                .to_string()
        })
        .collect()
}

/// The value of the sample whose line starts with `prefix`.
fn value(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix}… in\n{text}"))
}

/// The `expr` of every rule in a Prometheus rule file (single-line or a block scalar).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let key = line.trim_start();
        let key = key.strip_prefix("- ").unwrap_or(key);
        let indent = line.len() - key.len();
        i += 1;
        let Some(rest) = key.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.starts_with(['|', '>']) {
            exprs.push(rest.to_string());
            continue;
        }
        let mut block = String::new();
        while i < lines.len() {
            let l = lines[i];
            if !l.trim().is_empty() && l.len() - l.trim_start().len() <= indent {
                break;
            }
            block.push_str(l.trim());
            block.push(' ');
            i += 1;
        }
        exprs.push(block);
    }
    exprs
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names of a grouping clause, or inside label matchers, ranges or strings.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // Aggregations may put `by (…)` between their name and their argument.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => skip_to(&mut i, '}'),
            '[' => skip_to(&mut i, ']'),
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let called = j < chars.len() && chars[j] == '(';
                if GROUPING.contains(&word.as_str()) {
                    if called {
                        i = j;
                        skip_to(&mut i, ')');
                    }
                } else if !called
                    && !KEYWORDS.contains(&word.to_lowercase().as_str())
                    && !AGGREGATIONS.contains(&word.as_str())
                {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Reads the families with Python's `prometheus_client.parser` and checks the conventions:
/// `hsmca_`/`process_` names, counters' samples end in `_total`, histograms are `_seconds`,
/// timestamps are `_timestamp_seconds`. Prints `ok` or the problems.
const PARSE_AND_CHECK: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
problems = []
families = list(text_string_to_metric_families(sys.stdin.read()))
for f in families:
    if not (f.name.startswith("hsmca_") or f.name.startswith("process_")):
        problems.append("unprefixed: " + f.name)
    if f.type == "counter":
        for s in f.samples:
            if not s.name.endswith(("_total", "_created")):
                problems.append("counter sample without _total: " + s.name)
    if f.type == "histogram" and not f.name.endswith("_seconds"):
        problems.append("histogram not in seconds: " + f.name)
    if "timestamp" in f.name and not f.name.endswith("_timestamp_seconds"):
        problems.append("timestamp not in seconds: " + f.name)
    if f.type == "untyped":
        problems.append("untyped: " + f.name)
print(len(families), "families")
print("\n".join(problems) if problems else "ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_follow_the_conventions_and_cover_every_alert_rule() {
    let app = Appliance::start(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[audit]\ncheckpoint_interval_secs = 1\n",
    )
    .await;
    let addr = app
        .server
        .metrics_addr
        .expect("the plaintext metrics listener");

    // One certificate issued, one request refused.
    let mut grpc = app.client(None, false).await;
    let request = || {
        let csr = client::workload_csr(WorkloadKey::P256, "spiffe://cluster.local/ns/ns/sa/sa")
            .expect("csr");
        IstioCertificateRequest {
            csr: csr.csr_pem,
            validity_duration: 600,
            metadata: None,
        }
    };
    let mut ok = tonic::Request::new(request());
    let bearer = format!("Bearer {}", app.token_for("ns", "sa"));
    ok.metadata_mut()
        .insert("authorization", bearer.parse().expect("metadata"));
    grpc.create_certificate(ok).await.expect("issued");
    let mut refused = tonic::Request::new(request());
    refused.metadata_mut().insert(
        "authorization",
        "Bearer not-a-token".parse().expect("metadata"),
    );
    grpc.create_certificate(refused)
        .await
        .expect_err("refused without a valid token");

    // The first signed checkpoint comes within the (1 s) checkpoint interval.
    let mut text = String::new();
    for _ in 0..50 {
        let (status, body) = get_plain(addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        text = body;
        if text.contains("hsmca_audit_last_checkpoint_timestamp_seconds ") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The plaintext listener serves /metrics and nothing else.
    for path in ["/v1/state", "/bundle.pem", "/healthz"] {
        assert_eq!(get_plain(addr, path).await.0, 404, "{path}");
    }

    // Prometheus' own tools read it.
    let (linted, out) = run("promtool", &["check", "metrics"], &text);
    assert!(linted, "promtool check metrics:\n{out}\n{text}");
    let (parsed, out) = run("/usr/bin/python3", &["-c", PARSE_AND_CHECK], &text);
    assert!(parsed && out.ends_with("ok\n"), "{out}\n{text}");

    // What the values say.
    let names = sample_names(&text);
    let version = format!(
        "hsmca_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");
    let root = &app.roots[0];
    let cert = hsm_ca::ca::inspect::parse_certificate(root).expect("root");
    let root_line = format!(
        "hsmca_ca_certificate_not_after_timestamp_seconds{{kind=\"root\",fingerprint=\"{}\"",
        hsm_ca::ca::fingerprint_id(root)
    );
    assert_eq!(
        value(&text, &root_line),
        cert.validity().not_after.timestamp() as f64,
        "{text}"
    );
    assert!(
        text.contains("hsmca_ca_certificate_not_after_timestamp_seconds{kind=\"intermediate\""),
        "{text}"
    );
    assert!(value(&text, "hsmca_issuances_total{result=\"ok\"}") >= 1.0);
    assert!(value(&text, "hsmca_issuances_total{result=\"Unauthenticated\"}") >= 1.0);
    assert!(value(&text, "hsmca_issuance_seconds_count ") >= 1.0);
    assert_eq!(value(&text, "hsmca_audit_writer_up "), 1.0);
    assert_eq!(value(&text, "hsmca_device_up "), 1.0);
    assert_eq!(value(&text, "hsmca_device_errors_total "), 0.0);
    let checkpoint = value(&text, "hsmca_audit_last_checkpoint_timestamp_seconds ");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!(
        (now - checkpoint).abs() < 120.0,
        "checkpoint at {checkpoint}, now {now}"
    );
    let due = value(&text, "hsmca_intermediate_rotation_due_timestamp_seconds{");
    assert!(due > now, "a fresh intermediate is not due yet: {due}");
    assert!(value(&text, "process_resident_memory_bytes ") > 1e6);
    assert!(value(&text, "process_open_fds ") > 0.0);
    assert!(names.contains("process_cpu_seconds_total"), "{names:?}");

    // The alert rules and the scrape config pass promtool, and name only exported metrics.
    let rules = repo("ops/prometheus/hsm-ca-rules.yml");
    let (ok, out) = run(
        "promtool",
        &["check", "rules", rules.to_str().expect("path")],
        "",
    );
    assert!(ok, "promtool check rules:\n{out}");
    let scrape = repo("ops/prometheus/prometheus.yml");
    let (ok, out) = run(
        "promtool",
        &["check", "config", scrape.to_str().expect("path")],
        "",
    );
    assert!(ok, "promtool check config:\n{out}");
    let exprs = rule_expressions(&std::fs::read_to_string(&rules).expect("rules"));
    assert!(exprs.len() >= 8, "{exprs:?}");
    for expr in &exprs {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "no metric in {expr}");
        for name in used {
            assert!(
                names.contains(&name),
                "the rule `{expr}` names {name}, which the appliance does not export:\n{text}"
            );
        }
    }
    app.server.shutdown().await;
}

#[test]
fn rule_parsing_finds_the_metrics_and_only_them() {
    let found = metric_names(
        r#"sum by (instance, job) (rate(a_total{result!~"ok|x"}[5m])) > 0.25 * on(job) b
           and time() - c_seconds offset 5m > 1e3 and bool d"#,
    );
    let want: BTreeSet<String> = ["a_total", "b", "c_seconds", "d"].map(String::from).into();
    assert_eq!(found, want);
    let exprs = rule_expressions(
        "  - expr: x > 1\n    for: 1m\n  - expr: >-\n      y\n      and z\n    labels: {}\n",
    );
    assert_eq!(exprs, vec!["x > 1".to_string(), "y and z ".to_string()]);
}
