//! A child process under test: its output collected line by line as it comes, log lines waited
//! for with a deadline, signals, and an exit waited for.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait::Deadline;

/// Lines read from a pipe by a thread of their own, kept as they come.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

// === impl Lines ===

impl Lines {
    /// Reads `pipe` line by line until it closes.
    pub fn collect(pipe: impl Read + Send + 'static) -> Self {
        let lines = Self::default();
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        lines
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first line so far containing `needle`.
    pub fn find(&self, needle: &str) -> Option<String> {
        self.0.lock().unwrap().iter().find(|l| l.contains(needle)).cloned()
    }

    /// Waits for a line containing `needle`, for at most `within` (scaled); returns it.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> String {
        let mut deadline = Deadline::after(within);
        loop {
            if let Some(line) = self.find(needle) {
                return line;
            }
            deadline.tick(|| format!("no line with {needle:?}:\n{}", self.all().join("\n"))).await;
        }
    }
}

/// A child process with its standard output and error collected as [`Lines`]; killed when
/// dropped.
pub struct Process {
    what: String,
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

// === impl Process ===

impl Process {
    /// Spawns `command` with standard input closed and both outputs piped. `what` names it in
    /// failures.
    pub fn spawn(what: &str, command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        Self { what: what.to_owned(), child, stdout, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a line on standard error containing `needle`, for at most `within` (scaled);
    /// returns it. Fails at once if the process exits first. Blocks the thread: for callers
    /// that are not async, or whose runtime has nothing else to do meanwhile.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        let mut deadline = Deadline::after(within);
        loop {
            if let Some(line) = self.found_or_exited(needle) {
                return line;
            }
            deadline.tick_blocking(|| self.no_line(needle));
        }
    }

    /// [`Process::wait_for_log`] that lets the runtime run meanwhile.
    pub async fn wait_for_log_async(&mut self, needle: &str, within: Duration) -> String {
        let mut deadline = Deadline::after(within);
        loop {
            if let Some(line) = self.found_or_exited(needle) {
                return line;
            }
            deadline.tick(|| self.no_line(needle)).await;
        }
    }

    fn found_or_exited(&mut self, needle: &str) -> Option<String> {
        if let Some(line) = self.stderr.find(needle) {
            return Some(line);
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited with {status} before logging {needle:?}:\n{}",
                self.what,
                self.stderr.all().join("\n")
            );
        }
        None
    }

    fn no_line(&self, needle: &str) -> String {
        format!("no log line with {needle:?}:\n{}", self.stderr.all().join("\n"))
    }

    /// Sends signal `sig` (`TERM`, `HUP`…) with kill(1).
    pub fn signal(&self, sig: &str) {
        let sent = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(sent.success(), "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit, for at most `within` (scaled); its exit code (-1 when
    /// killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let mut deadline = Deadline::after(within);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            let what = &self.what;
            deadline.tick_blocking(|| format!("{what} did not exit"));
        }
    }

    /// Kills it (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
