//! A fault report as text for the terminal and as a Markdown table for the docs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::ledger::FaultReport;

fn codes(map: &BTreeMap<String, usize>) -> String {
    if map.is_empty() {
        return "0".to_owned();
    }
    map.iter()
        .map(|(code, n)| format!("{n} {code}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Requests refused before acceptance, and after them the websockets not opened, if any (a
/// Markdown cell).
fn refused(r: &FaultReport) -> String {
    if r.connect_failures.is_empty() {
        return codes(&r.refused);
    }
    format!(
        "{}; websockets not opened: {}",
        codes(&r.refused),
        codes(&r.connect_failures)
    )
}

fn recovery(r: &FaultReport) -> String {
    if r.recoveries.is_empty() {
        return "n/a".to_owned();
    }
    match r.worst_recovery() {
        Some(s) => format!("{s:.2} s (worst of {})", r.recoveries.len()),
        None => "never".to_owned(),
    }
}

/// One fault's counts, lost and duplicated ids, and failed checks, as lines of text.
pub fn text(r: &FaultReport) -> String {
    let mut out = String::new();
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "{verdict} {} ({:.0} s)", r.fault, r.wall_s);
    let _ = writeln!(
        out,
        "  sent {}, accepted {}, refused {}, ok {}, errors {}, re-asked ok {}, archive failed {}",
        r.sent,
        r.accepted,
        codes(&r.refused),
        r.ok,
        codes(&r.errors),
        r.reask_ok,
        r.archive_failed
    );
    let _ = writeln!(
        out,
        "  lost {}, duplicated {}, time to recover {}",
        r.lost,
        r.duplicated,
        recovery(r)
    );
    if !r.connect_failures.is_empty() {
        let _ = writeln!(
            out,
            "  websockets not opened: {}",
            codes(&r.connect_failures)
        );
    }
    for (what, ids) in [("lost", &r.lost_ids), ("duplicated", &r.duplicated_ids)] {
        if !ids.is_empty() {
            let shown = ids.iter().take(20).cloned().collect::<Vec<_>>().join("; ");
            let _ = writeln!(out, "  {what} ids ({}): {shown}", ids.len());
        }
    }
    for failure in &r.failures {
        let _ = writeln!(out, "  check failed: {failure}");
    }
    out
}

/// Every fault as a row of one Markdown table.
pub fn markdown(reports: &[FaultReport]) -> String {
    let mut out = String::from(
        "| fault | accepted | refused before acceptance | ok (bytes verified) | errors | re-asked ok | archive failed | lost | duplicated | time to recover | result |\n| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in reports {
        let result = if r.passed() {
            "pass".to_owned()
        } else if r.failures.is_empty() {
            "FAIL".to_owned()
        } else {
            format!("FAIL: {}", r.failures.join("; "))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.fault,
            r.accepted,
            refused(r),
            r.ok,
            codes(&r.errors),
            r.reask_ok,
            r.archive_failed,
            r.lost,
            r.duplicated,
            recovery(r),
            result
        );
    }
    out
}
