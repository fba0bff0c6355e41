//! What `cargo xtask bench` can compare, one file each, selected by one flag each. Adding a
//! comparison: a file here implementing [`Comparison`] (or, like `fanout`, running on its own),
//! its `mod` line, and its entry in [`ALL`].

mod baseline;
mod cache;
mod fanout;
mod mirror;
mod observability;
mod pinned;
mod policies;
mod resilience;
mod slow_clients;
mod swaps;
mod tls;

use std::path::Path;

use super::Args;
use super::configs::sluice_conf;
use super::processes::{Procs, SLUICE, SLUICE_ADMIN};
use super::report::{Results, Section};
use super::wrk::{SCENARIOS, Scenario};

/// Every comparison, in the order of `--help`; without a flag the first one runs.
pub(super) const ALL: &[Entry] = &[
    baseline::SAME,
    baseline::MINIMAL,
    pinned::ENTRY,
    resilience::ENTRY,
    observability::ENTRY,
    mirror::ENTRY,
    fanout::ENTRY,
    swaps::ENTRY,
    tls::ENTRY,
    slow_clients::ENTRY,
    policies::ENTRY,
    cache::ENTRY,
];

/// sluice-proxy with the plain config: the baseline's, and under other names the instance the
/// other comparisons measure their features against.
const PLAIN: Target =
    Target::sluice("sluice-proxy", SLUICE, SLUICE_ADMIN, "sluice.yaml", || sluice_conf(SLUICE));

/// One thing `cargo xtask bench` can run.
pub(super) struct Entry {
    /// The flag that selects it, without `--`; `None` for the one that runs without a flag.
    pub(super) flag: Option<&'static str>,
    /// The flag's `--help`.
    pub(super) help: &'static str,
    pub(super) run: fn(&Args) -> anyhow::Result<()>,
}

/// A comparison of proxies side by side under wrk (run by `bench::side_by_side`): what it starts,
/// what it reads once the runs are over, and what its report says beyond the tables.
pub(super) trait Comparison {
    /// Where its results go in docs/BENCHMARKS.md.
    fn section(&self) -> Section;

    /// The programs it needs on the PATH; the report gives their versions in this order.
    fn tools(&self) -> &'static [&'static str];

    /// What wrk measures, in the report's order.
    fn targets(&self) -> &'static [Target];

    /// What wrk asks each target for, in the report's order.
    fn scenarios(&self) -> &'static [Scenario] {
        &SCENARIOS
    }

    /// Fields (`Name: value`) wrk sends with every request to every target.
    fn headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// `Some`: SPEC §5's pinned method, each proxy alone on a CPU of its own with one worker.
    fn pinned(&self) -> Option<Pins> {
        None
    }

    /// Ports the upstream nginx listens on besides its own.
    fn upstream_ports(&self) -> &'static [u16] {
        &[]
    }

    /// Ports it listens on itself (in-process servers), checked free like the targets'.
    fn own_ports(&self) -> &'static [u16] {
        &[]
    }

    /// Starts its in-process servers. Called before any process starts, so they stop after
    /// the proxies that use them.
    fn prepare(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Starts the targets. Returns, in the order of `targets`, the process each one's CPU and
    /// memory are charged to.
    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>>;

    /// Called right after the runs, before memory is read. Failures are kept for the report
    /// rather than returned: they should not throw away minutes of runs.
    fn after_runs(&mut self, _targets: &[Target]) {}

    /// Called once memory has been read; may stop targets.
    fn after_memory(&mut self, _procs: &mut Procs, _targets: &[Target], _pids: &[u32]) {}

    /// Who shares the machine besides wrk, for the report's header.
    fn machine(&self, workers: usize) -> String;

    /// Paragraphs after the header.
    fn describe(&self, _out: &mut String) {}

    /// Lines after the table of scenario `si`.
    fn versus(&self, out: &mut String, r: &Results, si: usize);

    /// What follows the tables.
    fn notes(&self, out: &mut String, r: &Results);
}

/// The CPUs of the pinned method.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pins {
    /// wrk (one thread) and the upstream nginx (one worker).
    pub(super) load: usize,
    /// The proxy under test (one worker), alone.
    pub(super) proxy: usize,
}

/// What every comparison's targets start with.
pub(super) struct Start<'a> {
    pub(super) sluice_bin: &'a Path,
    pub(super) workers: usize,
    /// The upstream nginx.
    pub(super) upstream: u32,
}

/// What wrk measures: a proxy (or the upstream itself) on a port.
#[derive(Clone, Copy, Debug)]
pub(super) struct Target {
    pub(super) name: &'static str,
    pub(super) port: u16,
    pub(super) sluice: Option<Sluice>,
    /// Serves HTTPS (wrk trusts anything, as it does not verify).
    pub(super) tls: bool,
}

/// How a sluice-proxy target runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sluice {
    pub(super) admin: u16,
    pub(super) file: &'static str,
    pub(super) config: fn() -> String,
}

// === impl Target ===

impl Target {
    pub(super) const fn other(name: &'static str, port: u16) -> Self {
        Self { name, port, sluice: None, tls: false }
    }

    /// A sluice-proxy on `port` with its admin listener on `admin` and its config, `config()`,
    /// in `file` (in target/bench).
    pub(super) const fn sluice(
        name: &'static str,
        port: u16,
        admin: u16,
        file: &'static str,
        config: fn() -> String,
    ) -> Self {
        Self { name, port, sluice: Some(Sluice { admin, file, config }), tls: false }
    }

    /// The same target, over TLS.
    pub(super) const fn over_tls(self) -> Self {
        Self { tls: true, ..self }
    }

    /// Where wrk sends requests for `path`.
    pub(super) fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// The same proxy, ports and config under another name.
    pub(super) const fn named(self, name: &'static str) -> Self {
        Self { name, ..self }
    }

    /// Port of the admin listener, for sluice-proxy targets.
    pub(super) fn admin_port(&self) -> Option<u16> {
        self.sluice.map(|s| s.admin)
    }

    /// The config file of a sluice-proxy target, and its text.
    pub(super) fn sluice_config(&self) -> Option<(&'static str, String)> {
        self.sluice.map(|s| (s.file, (s.config)()))
    }
}

/// Targets are told apart by name (a comparison's baseline is another's plain instance).
impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Target {}

/// Every port comparison `c` listens on: the upstream's, the in-process servers', the targets'
/// and their admin listeners'.
pub(super) fn ports(c: &impl Comparison) -> Vec<u16> {
    let mut ports = vec![super::processes::UPSTREAM];
    ports.extend(c.upstream_ports().iter().chain(c.own_ports()));
    for t in c.targets() {
        ports.extend([t.port].into_iter().chain(t.admin_port()));
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Which entry of [`ALL`] runs: one flag each, at most one given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Which(usize);

// === impl Which ===

impl Which {
    pub(super) fn entry(self) -> &'static Entry {
        &ALL[self.0]
    }

    /// As on the command line: ` --mirror`, or nothing.
    pub(super) fn flag(self) -> String {
        self.entry().flag.map(|f| format!(" --{f}")).unwrap_or_default()
    }

    #[cfg(test)]
    pub(super) fn of(flag: &str) -> Self {
        Self(ALL.iter().position(|e| e.flag == Some(flag)).unwrap_or_else(|| panic!("no flag --{flag}")))
    }
}

impl clap::FromArgMatches for Which {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self(ALL.iter().position(|e| e.flag.is_some_and(|f| matches.get_flag(f))).unwrap_or(0)))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for Which {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let flags: Vec<&'static str> = ALL.iter().filter_map(|e| e.flag).collect();
        ALL.iter().filter_map(|e| Some((e.flag?, e.help))).fold(cmd, |cmd, (flag, help)| {
            cmd.arg(
                clap::Arg::new(flag)
                    .long(flag)
                    .help(help)
                    .action(clap::ArgAction::SetTrue)
                    .conflicts_with_all(flags.iter().copied().filter(|f| *f != flag)),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_flag_selects_one_comparison() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |argv: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
        };
        assert_eq!(parse(&[]).unwrap().args.which, Which::default());
        assert_eq!(ALL[0].flag, None);
        let flags: Vec<&str> = ALL.iter().filter_map(|e| e.flag).collect();
        assert_eq!(
            flags,
            [
                "minimal",
                "pinned",
                "resilience",
                "observability",
                "mirror",
                "fanout",
                "swaps",
                "tls",
                "slow-clients",
                "policies",
                "cache"
            ]
        );
        for flag in &flags {
            let which = parse(&[&format!("--{flag}")]).unwrap().args.which;
            assert_eq!(which, Which::of(flag));
            assert_eq!(which.flag(), format!(" --{flag}"));
            // Any two together are refused.
            for other in flags.iter().filter(|o| *o != flag) {
                assert!(parse(&[&format!("--{flag}"), &format!("--{other}")]).is_err(), "{flag} {other}");
            }
        }
        assert_eq!(parse(&["--fanout", "--streams", "10"]).unwrap().args.streams, 10);
    }
}
