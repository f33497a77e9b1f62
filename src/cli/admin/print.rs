//! How `hsm-ca admin` prints an answer: with `--output json` the API's JSON document as it
//! came (PEM and text answers wrapped as `{"pem": …}`, metrics as one object per sample);
//! otherwise an indented `key: value` rendering for people, PEM as it is. Files asked for with
//! `--out` are written in both modes.

use serde_json::{json, Map, Value};

use super::AdminCommand;
use crate::cli::output::print_json;
use crate::cli::CliError;
use crate::https::Answer;

pub(super) fn print(
    command: &AdminCommand,
    answer: &Answer,
    json_out: bool,
) -> Result<(), CliError> {
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    let pem_text = match command {
        AdminCommand::Crl {
            fingerprint: Some(_),
        } => Some(pem::encode(&pem::Pem::new("X509 CRL", answer.body.clone()))),
        AdminCommand::Crl { fingerprint: None } | AdminCommand::AuditPublicKey => {
            Some(text.clone())
        }
        AdminCommand::Bundle if !json_out => Some(text.clone()),
        _ => None,
    };
    if let Some(pem_text) = pem_text {
        if json_out {
            return print_json(&json!({ "pem": pem_text }));
        }
        say_raw!("{pem_text}");
        return Ok(());
    }
    if matches!(command, AdminCommand::Metrics) {
        if json_out {
            return print_json(&metric_samples(&text));
        }
        say_raw!("{text}");
        return Ok(());
    }
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::Message(format!("the admin API answered with no JSON ({e})")))?;
    write_requested_file(command, &body)?;
    if json_out {
        return print_json(&body);
    }
    if let Some(pending) = body
        .get("pending_approval")
        .or_else(|| body.get("proposal"))
    {
        say!(
            "waiting for approvals: proposal {}",
            pending["id"].as_str().unwrap_or("?")
        );
        say_raw!("{}", render(pending, 1));
        return Ok(());
    }
    say_raw!("{}", render(&body, 0));
    Ok(())
}

/// `--out` of `intermediate-new` (the CSR), `intermediate-sign` and `root-cross-sign` (the
/// certificate).
fn write_requested_file(command: &AdminCommand, body: &Value) -> Result<(), CliError> {
    let (out, field) = match command {
        AdminCommand::IntermediateNew { out: Some(out) } => (out, "csr_pem"),
        AdminCommand::IntermediateSign { out: Some(out), .. }
        | AdminCommand::RootCrossSign { out: Some(out), .. } => (out, "certificate_pem"),
        _ => return Ok(()),
    };
    let pem = body[field]
        .as_str()
        .ok_or_else(|| CliError::Message(format!("the answer has no {field}")))?;
    std::fs::write(out, pem).map_err(|e| CliError::Message(format!("{}: {e}", out.display())))
}

/// A JSON value as indented `key: value` lines; multi-line strings (PEM) as indented blocks.
pub(super) fn render(value: &Value, depth: usize) -> String {
    let mut out = String::new();
    render_into(&mut out, value, depth);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("-".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.contains('\n') => Some(s.clone()),
        Value::Array(a) if a.is_empty() => Some("(none)".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn render_into(out: &mut String, value: &Value, depth: usize) {
    let pad = "  ".repeat(depth);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}{k}: {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_into(out, v, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        out.push_str(&format!("{pad}-\n"));
                        render_into(out, item, depth + 1);
                    }
                }
            }
        }
        Value::String(s) => {
            for line in s.lines() {
                out.push_str(&format!("{pad}{line}\n"));
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other).unwrap_or_default())),
    }
}

/// The samples of a Prometheus text exposition: `[{"name", "labels": {..}, "value"}]`.
pub(super) fn metric_samples(text: &str) -> Value {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(pair) => pair,
            None => continue,
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Map::new()),
        };
        let value = value
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        samples.push(json!({"name": name, "labels": labels, "value": value}));
    }
    Value::Array(samples)
}

/// `a="x",b="y \"q\""` → `{a: x, b: y "q"}`.
fn parse_labels(text: &str) -> Map<String, Value> {
    let mut labels = Map::new();
    let mut chars = text.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches(',').trim().to_string();
        if name.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(name, Value::String(value));
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_become_samples_with_labels() {
        let text = "# HELP x y\n# TYPE a_total counter\na_total{result=\"ok\",why=\"a \\\"b\\\", c\"} 3\nb 1.5\n";
        let samples = metric_samples(text);
        assert_eq!(
            samples,
            json!([
                {"name": "a_total", "labels": {"result": "ok", "why": "a \"b\", c"}, "value": 3.0},
                {"name": "b", "labels": {}, "value": 1.5},
            ])
        );
    }

    #[test]
    fn text_rendering_indents_and_keeps_pem_blocks() {
        let v =
            json!({"roots": [{"fingerprint": "ab", "pem": "-----BEGIN-----\nx\n"}], "ok": true});
        assert_eq!(
            render(&v, 0),
            "ok: true\nroots:\n  -\n    fingerprint: ab\n    pem:\n      -----BEGIN-----\n      x\n"
        );
    }
}
