//! Real servers of a test's own, from the test kit (`testkit`): a Postgres
//! database (or a whole private Postgres), a nats-server. Each panics with
//! the kit's message (what is missing, how to start it) when it cannot run.

use super::*;

pub use testkit::{ADMIN_URL_DEFAULT, free_port};

/// A small pool on `url`, for a test's own queries.
pub async fn pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::any::AnyPoolOptions::new().max_connections(4).connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// A database of its own on the Postgres server at `DATABASE_URL`
/// (default: the local server, user postgres), dropped when the test is
/// done with it (kept with `ESO_KEEP_TEST_DATABASES=1`, for inspection).
pub struct Postgres {
    pub url: String,
    owned: Option<testkit::Database>,
}

impl Postgres {
    pub async fn fresh() -> Postgres {
        let database = testkit::Database::create(&testkit::admin_url(), "eso_test").await.unwrap_or_else(|e| panic!("this test needs PostgreSQL: {e:#}"));
        Postgres { url: database.url.clone(), owned: Some(database) }
    }

    /// A database the test does not own (a private server's), never dropped.
    pub fn at(url: &str) -> Postgres {
        Postgres { url: url.to_string(), owned: None }
    }

    pub async fn pool(&self) -> sqlx::AnyPool {
        pool(&self.url).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(database) = self.owned.take() else { return };
        if std::env::var_os("ESO_KEEP_TEST_DATABASES").is_some() {
            return;
        }
        // A drop runs inside the test's runtime, which cannot block on a
        // future: the drop gets a thread and a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(database.drop_database())
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop a test database: {e:#}");
        }
    }
}

/// A PostgreSQL server of this test's own, for tests that crash it.
pub struct PrivatePostgres(testkit::PrivatePostgres);

impl PrivatePostgres {
    pub async fn start() -> PrivatePostgres {
        PrivatePostgres(testkit::PrivatePostgres::start().await)
    }

    pub async fn pool(&self) -> sqlx::AnyPool {
        pool(&self.0.url).await
    }
}

impl std::ops::Deref for PrivatePostgres {
    type Target = testkit::PrivatePostgres;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for PrivatePostgres {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A `nats-server` with JetStream of this test's own.
pub struct Nats {
    pub port: u16,
    pub url: String,
    server: testkit::NatsServer,
}

impl Nats {
    pub async fn start() -> Nats {
        let server = testkit::NatsServer::start_temporary().await.unwrap_or_else(|e| panic!("this test needs nats-server: {e:#}"));
        Nats { port: server.port, url: server.url.clone(), server }
    }

    /// Starts the server again on the same port and storage.
    pub async fn start_again(&mut self) {
        self.server.start_again().await.unwrap_or_else(|e| panic!("this test needs nats-server: {e:#}"));
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self) {
        self.server.kill();
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap_or_else(|e| panic!("connect nats: {e}"))
    }
}

pub async fn wait_for_port(port: u16, timeout: Duration) {
    testkit::wait_for_port(port, timeout).await.unwrap_or_else(|e| panic!("{e:#}"));
}
