//! The report: a section of docs/BENCHMARKS.md between a comparison's markers, with the command
//! line and the machine, a table of medians per scenario, and the comparison's own notes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use super::Args;
use super::compare::{Comparison, Target};
use super::wrk::{Run, Scenario, median, ratio};
use crate::root;

/// Where a comparison's results go in docs/BENCHMARKS.md.
#[derive(Clone, Copy, Debug)]
pub(super) struct Section {
    pub(super) begin: &'static str,
    pub(super) end: &'static str,
    /// The heading the section is appended under when its markers are missing. The older
    /// sections sit among hand-written analysis, so for them (`None`) a missing marker is an
    /// error rather than a guess at where they belong.
    pub(super) heading: Option<&'static str>,
}

/// What a benchmark measured, whatever it compared.
pub(super) struct Results {
    pub(super) targets: Vec<Target>,
    /// `runs[scenario][target]`, targets in the order of `targets`.
    pub(super) runs: Vec<Vec<Vec<Run>>>,
    /// Requests each target served in all, checks included.
    pub(super) served: Vec<u64>,
    /// RSS of each target's processes, idle after start and idle after the runs.
    pub(super) idle_rss: Vec<u64>,
    pub(super) after_rss: Vec<u64>,
    /// Peak RSS (`VmHWM`) of each target's main process, read after the runs.
    pub(super) peak_rss: Vec<u64>,
    /// RSS of every process started, after the runs.
    pub(super) others_rss: Vec<(&'static str, u64)>,
    pub(super) took: Duration,
}

impl Results {
    /// The runs of target `t` in scenario `si`.
    pub(super) fn runs_of(&self, si: usize, t: Target) -> &[Run] {
        self.targets.iter().position(|x| *x == t).map(|i| self.runs[si][i].as_slice()).unwrap_or_default()
    }

    /// Requests target `t` served in all.
    pub(super) fn served_of(&self, t: Target) -> u64 {
        self.targets.iter().position(|x| *x == t).and_then(|i| self.served.get(i).copied()).unwrap_or(0)
    }
}

/// The section of comparison `c`, markers included.
pub(super) fn render(c: &impl Comparison, args: &Args, r: &Results) -> String {
    let Section { begin, end, .. } = c.section();
    let mut out = String::new();
    let _ = writeln!(out, "{begin}");
    header(&mut out, c, args, r.took);
    for (si, s) in c.scenarios().iter().enumerate() {
        scenario_table(&mut out, s, &r.targets, &r.runs[si], c.pinned().is_some());
        c.versus(&mut out, r, si);
        let _ = writeln!(out);
    }
    c.notes(&mut out, r);
    let _ = writeln!(out, "{end}");
    out
}

/// `what: throughput X×, p99 Y×, CPU per request Z×` of `runs` against `base`.
pub(super) fn versus(out: &mut String, what: &str, runs: &[Run], base: &[Run]) {
    let _ = writeln!(
        out,
        "{what}: throughput {:.2}×, p99 {:.2}×, CPU per request {:.2}×",
        ratio(runs, base, |r| r.rps),
        ratio(runs, base, |r| r.p99_ms),
        ratio(runs, base, |r| r.cpu_us),
    );
}

/// The command line and the machine.
fn header(out: &mut String, c: &impl Comparison, args: &Args, took: Duration) {
    let version = |cmd: &str, arg: &str| -> String {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let text =
                    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                text.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = version("date", "+%F");
    let on = if date.is_empty() { String::new() } else { format!(" on {date}") };
    let workers = if c.pinned().is_some() { String::new() } else { format!(" --workers {}", args.workers) };
    let _ = writeln!(
        out,
        "Generated{on} by `cargo xtask bench --duration {} --rounds {}{workers}{}` ({} s of wrk per run, \
         medians of {} alternated rounds, {:.0} min in all).\n",
        args.duration,
        args.rounds,
        args.which.flag(),
        args.duration,
        args.rounds,
        took.as_secs_f64() / 60.0
    );
    let versions: Vec<String> = c
        .tools()
        .iter()
        .map(|tool| match *tool {
            "wrk" => version("wrk", "-v").split(" Copyright").next().unwrap_or("").to_owned(),
            tool => version(tool, "-v"),
        })
        .collect();
    let shared = if c.pinned().is_some() { "" } else { "shared by wrk (2 threads), " };
    let _ = writeln!(
        out,
        "Machine: {cpu}, {cores} cores, {shared}{}. {}.\n",
        c.machine(args.workers),
        versions.join(" · ")
    );
    c.describe(out);
}

/// One scenario's medians, a row per target; `per_core` adds requests per CPU-second.
fn scenario_table(out: &mut String, s: &Scenario, targets: &[Target], runs: &[Vec<Run>], per_core: bool) {
    let _ = writeln!(out, "### {}\n", s.name);
    let (head, rule) = if per_core { (" requests per CPU-second |", "---:|") } else { ("", "") };
    let _ = writeln!(out, "| target | requests/s |{head} p50 | p99 | CPU per request | errors |");
    let _ = writeln!(out, "|---|---:|{rule}---:|---:|---:|---:|");
    for (t, runs) in targets.iter().zip(runs) {
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        let core =
            if per_core { format!(" {:.0} |", median(runs, Run::per_cpu_second)) } else { String::new() };
        let _ = writeln!(
            out,
            "| {} | {:.0} |{core} {:.3} ms | {:.3} ms | {:.1} µs | {errors} |",
            t.name,
            median(runs, |r| r.rps),
            median(runs, |r| r.p50_ms),
            median(runs, |r| r.p99_ms),
            median(runs, |r| r.cpu_us),
        );
    }
}

/// Bytes in MiB, for the memory tables.
pub(super) fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// RSS of each instance, idle after start and after the runs.
pub(super) fn instances_memory(out: &mut String, r: &Results) {
    let _ = writeln!(out, "\n### Memory (RSS)\n");
    let _ = writeln!(out, "| instance | idle after start | idle after the runs |\n|---|---:|---:|");
    for (i, t) in r.targets.iter().enumerate() {
        let rss = |of: &[u64]| of.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {:.1} MiB |",
            t.name,
            mib(rss(&r.idle_rss)),
            mib(rss(&r.after_rss))
        );
    }
}

/// Replaces `section` of docs/BENCHMARKS.md with `report`.
pub(super) fn write(report: &str, section: Section) -> anyhow::Result<()> {
    let Section { begin, end, .. } = section;
    let path: PathBuf = root().join("docs/BENCHMARKS.md");
    let current =
        std::fs::read_to_string(&path).unwrap_or_else(|_| format!("# Benchmarks\n\n{begin}\n{end}\n"));
    std::fs::write(&path, splice(&current, report, section)?)?;
    Ok(())
}

/// `current` with `section` replaced by `report` (which carries the markers). A section with a
/// heading of its own is appended when neither marker is there yet.
fn splice(current: &str, report: &str, section: Section) -> anyhow::Result<String> {
    let Section { begin, end, heading } = section;
    match (current.find(begin), current.find(end), heading) {
        (Some(b), Some(e), _) if b < e => {
            Ok(format!("{}{}{}", &current[..b], report.trim_end(), &current[e + end.len()..]))
        }
        (None, None, Some(heading)) => {
            Ok(format!("{}\n\n## {heading}\n\n{}\n", current.trim_end(), report.trim_end()))
        }
        _ => bail!("docs/BENCHMARKS.md has no {begin} … {end} section to replace"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Section = Section { begin: "<!-- old:begin -->", end: "<!-- old:end -->", heading: None };
    const NEW: Section =
        Section { begin: "<!-- new:begin -->", end: "<!-- new:end -->", heading: Some("New") };
    const NEWER: Section =
        Section { begin: "<!-- newer:begin -->", end: "<!-- newer:end -->", heading: Some("Newer") };

    fn report(s: Section, text: &str) -> String {
        format!("{}\n{text}\n{}\n", s.begin, s.end)
    }

    #[test]
    fn replaces_or_appends_the_generated_section() {
        let doc = format!("# B\n\n{}\nanalysis\n", report(OLD, "old"));
        assert_eq!(splice(&doc, &report(OLD, "new"), OLD).unwrap(), doc.replace("old\n", "new\n"));
        // A section without a heading is never appended: where it goes is up to the hand-written text.
        assert!(splice("# B\n", &report(OLD, "x"), OLD).is_err());

        let appended = splice(&doc, &report(NEW, "new"), NEW).unwrap();
        assert_eq!(appended, format!("{}\n\n## New\n\n{}", doc.trim_end(), report(NEW, "new")));
        // Once appended, the section is replaced in place like the others.
        assert_eq!(
            splice(&appended, &report(NEW, "newer"), NEW).unwrap(),
            appended.replace("new\n", "newer\n")
        );
        // Half a pair of markers is a broken file, not a missing section.
        assert!(splice(&format!("{doc}{}\n", NEW.begin), &report(NEW, "x"), NEW).is_err());
        assert!(splice(&format!("{doc}{}\n", NEW.end), &report(NEW, "x"), NEW).is_err());

        // A second new section goes after the first, and replacing it leaves the first alone;
        // hand-written analysis after it stays.
        let both = splice(&appended, &report(NEWER, "a"), NEWER).unwrap();
        assert_eq!(both, format!("{}\n\n## Newer\n\n{}", appended.trim_end(), report(NEWER, "a")));
        let again = splice(&format!("{both}\nanalysis\n"), &report(NEWER, "b"), NEWER).unwrap();
        assert!(again.contains(&report(NEW, "new")), "{again}");
        assert!(again.ends_with(&format!("{}\nanalysis\n", report(NEWER, "b"))), "{again}");
    }
}
