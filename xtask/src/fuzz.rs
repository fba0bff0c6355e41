//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz targets of fuzz/ (libFuzzer,
//! nightly) for N seconds each, starting from their seed corpora, and fails if any crashed.
//!
//! The committed seeds in fuzz/corpus/<target>/ are only read: what libFuzzer adds goes to
//! target/fuzz-corpus/<target>/ (kept between runs), crash reproducers to fuzz/artifacts/<target>/.
//! Both are ignored by git. `cargo test` replays the seeds without libFuzzer.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use crate::root;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of fuzzing per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Targets to run; all of fuzz/Cargo.toml's by default.
    targets: Vec<String>,
}

/// How one target's run ended.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    /// libFuzzer's "Done N runs", absent if it stopped without saying.
    runs: Option<u64>,
    /// Where libFuzzer wrote the input that failed.
    artifact: Option<String>,
    success: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let root = root();
    let all = targets(&root.join("fuzz/Cargo.toml"))?;
    let chosen = if args.targets.is_empty() { all.clone() } else { args.targets.clone() };
    for t in &chosen {
        ensure!(all.contains(t), "no fuzz target {t}; there are: {}", all.join(", "));
    }
    let mut outcomes = Vec::new();
    for t in &chosen {
        eprintln!("== fuzzing {t} for {} s", args.seconds);
        let outcome = fuzz(&root, t, args.seconds)?;
        outcomes.push((t, outcome));
    }
    println!("\n| target | result | runs |\n|---|---|---:|");
    let mut failed = Vec::new();
    for (t, o) in &outcomes {
        let result = match (o.success, &o.artifact) {
            (true, _) => "no crash".to_owned(),
            (false, Some(a)) => format!("**crashed**: {a}"),
            (false, None) => "**failed** (see its output above)".to_owned(),
        };
        let runs = o.runs.map_or_else(|| "–".to_owned(), |n| n.to_string());
        println!("| {t} | {result} | {runs} |");
        if !o.success {
            failed.push(t.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Runs `cargo +nightly fuzz run <target>` for `seconds`, passing its output on and reading the
/// run count and the crash reproducer out of libFuzzer's.
fn fuzz(root: &Path, target: &str, seconds: u64) -> anyhow::Result<Outcome> {
    // libFuzzer writes new inputs to the first corpus directory and only reads the others.
    let grown = root.join("target/fuzz-corpus").join(target);
    std::fs::create_dir_all(&grown)?;
    let seeds = root.join("fuzz/corpus").join(target);
    let mut child = Command::new("cargo")
        .current_dir(root)
        .args(["+nightly", "fuzz", "run", target])
        .arg(&grown)
        .arg(&seeds)
        .args(["--", &format!("-max_total_time={seconds}")])
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo +nightly fuzz")?;
    let mut outcome = Outcome::default();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            eprintln!("{line}");
            read_line(&line, &mut outcome);
        }
    }
    outcome.success = child.wait()?.success();
    Ok(outcome)
}

/// Takes what `outcome` needs from one line of libFuzzer's output.
fn read_line(line: &str, outcome: &mut Outcome) {
    // `Done 123456 runs in 31 second(s)`
    if let Some(rest) = line.strip_prefix("Done ")
        && let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok())
    {
        outcome.runs = Some(n);
    }
    // `Test unit written to fuzz/artifacts/<target>/crash-<sha1>`
    if let Some((_, path)) = line.split_once("Test unit written to ") {
        outcome.artifact = Some(path.trim().to_owned());
    }
}

/// The `[[bin]]` names of the fuzz crate's manifest.
fn targets(manifest: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let names = bin_names(&text);
    ensure!(!names.is_empty(), "{} has no [[bin]] targets", manifest.display());
    Ok(names)
}

fn bin_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin
            && let Some(value) = line.strip_prefix("name").map(str::trim_start)
            && let Some(value) = value.strip_prefix('=')
        {
            names.push(value.trim().trim_matches('"').to_owned());
        }
    }
    names
}

/// libFuzzer needs a nightly toolchain (sanitizer flags).
fn ensure_nightly() -> anyhow::Result<()> {
    let out = Command::new("rustup").args(["toolchain", "list"]).output().context("running rustup")?;
    let list = String::from_utf8_lossy(&out.stdout);
    ensure!(
        list.lines().any(|l| l.starts_with("nightly")),
        "cargo fuzz needs a nightly toolchain: `rustup toolchain install nightly --profile minimal`"
    );
    Ok(())
}

/// Installs cargo-fuzz if `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("== installing cargo-fuzz");
    let status = Command::new("cargo")
        .args(["install", "cargo-fuzz", "--locked"])
        // Its own target directory, not this workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo install")?;
    ensure!(status.success(), "cargo install cargo-fuzz --locked failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_targets_of_the_fuzz_manifest() {
        let names = targets(&root().join("fuzz/Cargo.toml")).unwrap();
        assert_eq!(
            names,
            ["config_parse", "bundle_verify", "http1_framing", "http1_response", "response_diff"]
        );
        // Each has a seed corpus.
        for n in &names {
            let seeds = root().join("fuzz/corpus").join(n);
            assert!(std::fs::read_dir(&seeds).unwrap().next().is_some(), "{}", seeds.display());
        }
        assert_eq!(bin_names("[package]\nname = \"x\"\n[[bin]]\nname = \"a\"\npath = \"a.rs\"\n"), ["a"]);
    }

    #[test]
    fn reads_runs_and_the_reproducer_from_libfuzzer() {
        let mut o = Outcome::default();
        for line in [
            "#65536\tpulse  cov: 120 ft: 300 corp: 40/2Kb exec/s: 2184 rss: 60Mb",
            "==12== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/w/fuzz/artifacts/config_parse/'; Test unit written to /w/fuzz/artifacts/config_parse/crash-ab12",
            "Done 65890 runs in 31 second(s)",
        ] {
            read_line(line, &mut o);
        }
        assert_eq!(o.runs, Some(65890));
        assert_eq!(o.artifact.as_deref(), Some("/w/fuzz/artifacts/config_parse/crash-ab12"));
    }
}
