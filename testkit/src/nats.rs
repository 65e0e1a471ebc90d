//! A `nats-server` with JetStream of the caller's own, on a free port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Output, Process, ProcessSpec};

/// A private `nats-server -js` on 127.0.0.1, its store in a directory of
/// the caller's (or a temporary one); killed when dropped.
pub struct NatsServer {
    pub port: u16,
    pub url: String,
    process: Option<Process>,
    spec: ProcessSpec,
    _tempdir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// `nats-server` (found by [`find_nats_server`]) with its store in a
    /// temporary directory removed on drop.
    pub async fn start_temporary() -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new().prefix("eso-nats-").tempdir()?;
        let mut nats = NatsServer::start(&find_nats_server(), dir.path()).await?;
        nats._tempdir = Some(dir);
        Ok(nats)
    }

    /// `binary -js` with its store in `dir` (created if missing).
    pub async fn start(binary: &Path, dir: &Path) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let port = crate::free_port();
        let spec = ProcessSpec::new("nats-server", binary, port)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .args([dir.display().to_string()])
            .output(Output::Null)
            .ready_timeout(Duration::from_secs(10));
        let mut nats = NatsServer { port, url: format!("nats://127.0.0.1:{port}"), process: None, spec, _tempdir: None };
        nats.start_again().await?;
        Ok(nats)
    }

    /// Starts the server (again) on the same port and storage.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.kill();
        let process = Process::spawn(self.spec.clone()).await.map_err(|e| {
            e.context(format!(
                "cannot start {} (install it: `apt-get install nats-server` (Debian), or pass its path (eso-bench: --nats-server PATH) or an existing NATS (eso-bench: --nats-url URL))",
                self.spec.program.display()
            ))
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    /// SIGKILL: as if the server crashed.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut process) = self.process.take() {
            process.stop(grace).await;
        }
    }
}

/// `nats-server` from `/usr/sbin` (the Debian package), `/usr/bin`,
/// `/usr/local/bin`, or else PATH.
pub fn find_nats_server() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_nats_server_says_how_to_install_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = NatsServer::start(Path::new("/nonexistent/nats-server"), dir.path()).await.err().expect("started a binary that does not exist");
        let message = format!("{error:#}");
        assert!(message.contains("apt-get install nats-server") && message.contains("/nonexistent/nats-server"), "{message}");
    }
}
