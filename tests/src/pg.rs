//! A private PostgreSQL cluster under `target/`, for machines where none answers: `initdb` and
//! `pg_ctl` from the machine's PostgreSQL binaries, on a free loopback port, trust auth for
//! local connections only. Run as an unprivileged user when we are root (PostgreSQL refuses to
//! run as root). Standard library only: `xtask` includes this file too.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A cluster's directory and port.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    /// The OS user it runs as, when we are root.
    user: Option<String>,
    bin: PathBuf,
}

/// Where PostgreSQL's server binaries are: `$PG_BIN`, the newest `/usr/lib/postgresql/*/bin`
/// (Debian), or `PATH`.
pub fn binaries() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    on_path.ok_or_else(|| {
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install them (Debian/Ubuntu: \
         `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; macOS: \
         `brew install postgresql`), set PG_BIN to their directory, or point DATABASE_URL at a \
         server you have"
            .to_owned()
    })
}

/// Whether something accepts connections at `port` on loopback.
pub fn answers(port: u16) -> bool {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// The unprivileged user to run as when we are root: `postgres` if it exists, else `nobody`.
fn run_as() -> Option<String> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let exists = |u: &str| passwd.lines().any(|l| l.split(':').next() == Some(u));
    Some(if exists("postgres") { "postgres" } else { "nobody" }.to_owned())
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

// === impl Cluster ===

impl Cluster {
    /// The cluster in `dir`: reused when it already runs, started when it exists but is down,
    /// made (`initdb`) when it does not exist. On creation, `extra` lines go into
    /// `postgresql.conf` (e.g. `ssl = on`) and `hba_first` lines at the top of `pg_hba.conf`
    /// (the first match wins). Left running for the next caller; see [`Cluster::stop`].
    pub fn ensure(dir: &Path, extra: &[&str], hba_first: &[&str]) -> Result<Self, String> {
        let bin = binaries()?;
        let user = run_as();
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let data = dir.join("data");
        let port_file = dir.join("port");
        let cluster = |port| Self { dir: dir.to_owned(), port, user: user.clone(), bin: bin.clone() };
        if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok()) {
            let c = cluster(port);
            if answers(port) && data.join("postmaster.pid").exists() {
                return Ok(c);
            }
            if data.join("PG_VERSION").exists() {
                c.start()?;
                return Ok(c);
            }
        }
        let port = free_port()?;
        let c = cluster(port);
        if let Some(u) = &user {
            chown(u, dir)?;
        }
        c.run("initdb", &["-D", path(&data)?, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])?;
        let mut conf = format!(
            "\n# sluice: a private cluster for tests and the demo\nport = {port}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nfsync = off\nmax_connections = 300\n",
            path(&data)?
        );
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf_path).map_err(|e| e.to_string())?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(|e| e.to_string())?;
        if !hba_first.is_empty() {
            let hba_path = data.join("pg_hba.conf");
            let hba = std::fs::read_to_string(&hba_path).map_err(|e| e.to_string())?;
            std::fs::write(&hba_path, format!("{}\n{hba}", hba_first.join("\n")))
                .map_err(|e| e.to_string())?;
        }
        std::fs::write(&port_file, port.to_string()).map_err(|e| e.to_string())?;
        c.start()?;
        Ok(c)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start(&self) -> Result<(), String> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        self.run("pg_ctl", &["-D", path(&data)?, "-l", path(&log)?, "-w", "-t", "60", "start"])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answers(self.port) {
            if Instant::now() > deadline {
                return Err(format!(
                    "PostgreSQL in {} did not come up; see {}",
                    data.display(),
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops it (fast shutdown).
    pub fn stop(&self) -> Result<(), String> {
        self.run("pg_ctl", &["-D", path(&self.data_dir())?, "-m", "fast", "-w", "stop"])
    }

    /// Runs one of the server binaries, as the unprivileged user when we are root.
    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed: {}{}",
                exe.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

fn path(p: &Path) -> Result<&str, String> {
    p.to_str().ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

/// Hands `dir` to `user` (the cluster's files must be its own).
fn chown(user: &str, dir: &Path) -> Result<(), String> {
    let status = Command::new("chown")
        .args(["-R", &format!("{user}:")])
        .arg(dir)
        .status()
        .map_err(|e| format!("cannot run chown: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("chown {user} {} failed", dir.display()))
}
