//! Child processes: spawned with an environment of their own, waited for on
//! their port, stopped gently (SIGTERM, then SIGKILL after a grace period)
//! or killed as in a crash, and restarted the same way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Where a child's stdout and stderr go.
#[derive(Debug, Clone)]
pub enum Output {
    Null,
    Inherit,
    /// Appended to this file (created if missing); its tail is quoted when
    /// the process dies before it is ready.
    File(PathBuf),
}

/// How to start a process (again): what [`Process::spawn`] and
/// [`Process::restart`] run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// For messages, e.g. `eso participant payment`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Variables of the caller's environment the child must not inherit.
    pub env_remove: Vec<String>,
    pub output: Output,
    /// The port it listens on once ready (the caller passes it in `env`
    /// or `args` in whatever form the program reads it).
    pub port: u16,
    pub ready_timeout: Duration,
}

impl ProcessSpec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, port: u16) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: vec![],
            env: vec![],
            env_remove: vec![],
            output: Output::Null,
            port,
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> ProcessSpec {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ProcessSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs<K: AsRef<str>, V: AsRef<str>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> ProcessSpec {
        self.env.extend(vars.into_iter().map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string())));
        self
    }

    pub fn env_remove<S: AsRef<str>>(mut self, keys: impl IntoIterator<Item = S>) -> ProcessSpec {
        self.env_remove.extend(keys.into_iter().map(|k| k.as_ref().to_string()));
        self
    }

    pub fn output(mut self, output: Output) -> ProcessSpec {
        self.output = output;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> ProcessSpec {
        self.ready_timeout = timeout;
        self
    }

    fn start(&self) -> anyhow::Result<Child> {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for key in &self.env_remove {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        match &self.output {
            Output::Null => command.stdout(Stdio::null()).stderr(Stdio::null()),
            Output::Inherit => command.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
            Output::File(path) => {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("creating {}", path.display()))?;
                command.stdout(log.try_clone()?).stderr(log)
            }
        };
        command.spawn().with_context(|| format!("starting {} ({} {})", self.name, self.program.display(), self.args.join(" ")))
    }
}

/// A running child process; killed (SIGKILL) when dropped.
pub struct Process {
    pub spec: ProcessSpec,
    child: Child,
}

impl Process {
    /// Starts the process and waits until it listens on its port; fails
    /// (quoting its log) if it exits first or is not ready in time.
    pub async fn spawn(spec: ProcessSpec) -> anyhow::Result<Process> {
        let child = spec.start()?;
        let mut process = Process { spec, child };
        process.wait_until_listening().await?;
        Ok(process)
    }

    async fn wait_until_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.spec.ready_timeout;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.spec.port)).await.is_err() {
            if let Some(status) = self.exited() {
                bail!("{} exited ({status}) before it listened on port {}{}", self.spec.name, self.spec.port, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{} not listening on port {} after {:?}{}", self.spec.name, self.spec.port, self.spec.ready_timeout, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.spec.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.port)
    }

    /// Its exit status if it has exited (reaping it), else `None`.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: no shutdown code runs, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, without waiting (see [`Process::wait_or_kill`]).
    pub fn terminate(&self) {
        signal(&[self.pid()], Signal::SIGTERM);
    }

    /// Waits up to `grace` for it to exit, then kills it; whether it exited
    /// by itself.
    pub async fn wait_or_kill(&mut self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill();
        false
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn stop(&mut self, grace: Duration) -> bool {
        self.terminate();
        self.wait_or_kill(grace).await
    }

    /// Kills it (if running) and starts it again with the same spec: same
    /// port, environment and arguments.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = self.spec.start()?;
        self.wait_until_listening().await
    }

    /// The last 20 lines of its log file, after a newline and a heading;
    /// empty unless its output goes to a file.
    pub fn log_tail(&self) -> String {
        match &self.spec.output {
            Output::File(path) => format!("; its log ({}):\n{}", path.display(), tail(path, 20)),
            _ => String::new(),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends a signal (SIGTERM, SIGSTOP, SIGCONT, …) to each pid with kill(2);
/// a pid that is gone is skipped.
pub fn signal(pids: &[u32], signal: Signal) {
    for &pid in pids {
        let Ok(raw) = i32::try_from(pid) else { continue };
        if let Err(e) = nix::sys::signal::kill(Pid::from_raw(raw), signal)
            && e != nix::errno::Errno::ESRCH
        {
            eprintln!("kill -{} {pid}: {e}", signal.as_str());
        }
    }
}
