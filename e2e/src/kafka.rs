//! [`PrivateKafka`]: a Kafka broker of the test's own, which can be stopped and started
//! again (the shared test broker never is).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_test_support::process::free_port;
use fleet_test_support::repo_root;

/// A Kafka broker of the test's own: one KRaft broker+controller JVM from the jars
/// `scripts/services.sh up` cached, on free loopback ports, its data and logs in a
/// temporary directory. It can be stopped (a broker outage) and started again on the same
/// ports and data, which the shared test broker must never be.
///
/// It is configured like the shared broker (`scripts/services/server.properties.in`,
/// `scripts/services/log4j2.xml`, the same heap): the storage is formatted with
/// `kafka.tools.StorageTool format --standalone`, the broker runs as `kafka.Kafka
/// server.properties`. It is killed on drop, and (through `setpriv --pdeathsig`) when the
/// thread that started it ends, so a test that dies leaves no JVM behind: start it from
/// the test's own thread (the test body), not from `spawn_blocking`.
#[derive(Debug)]
pub struct PrivateKafka {
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    libs: PathBuf,
    child: Option<Child>,
}

/// How long a start may take until every topic has a leader.
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stop waits after SIGTERM before SIGKILL.
const KAFKA_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The heap `scripts/services.sh` gives the shared broker.
const KAFKA_HEAP: [&str; 2] = ["-Xmx512m", "-Xms256m"];

/// The Kafka version `scripts/services.sh` pins (its `KAFKA_VERSION=` line).
fn pinned_kafka_version() -> anyhow::Result<String> {
    let script = repo_root().join("scripts/services.sh");
    let text = std::fs::read_to_string(&script)
        .with_context(|| format!("reading {}", script.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .with_context(|| format!("no KAFKA_VERSION= line in {}", script.display()))
}

/// The directory of Kafka jars `scripts/services.sh up` fetched.
fn kafka_libs() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("FLEET_SERVICES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/fleetstream-services"),
    };
    let version = pinned_kafka_version()?;
    let libs = base.join(format!("kafka-{version}")).join("libs");
    if !libs.join(".complete").exists() {
        bail!(
            "the Kafka {version} jars are missing from {}: run `scripts/services.sh up` \
             (it fetches them from Maven Central) and try again",
            libs.display()
        );
    }
    Ok(libs)
}

fn java_bin() -> PathBuf {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if Path::new(&home).join("bin/java").exists() => {
            Path::new(&home).join("bin/java")
        }
        _ => PathBuf::from("java"),
    }
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding, as
/// `StorageTool random-uuid` prints (never starting with `-`).
fn kafka_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut out = String::new();
        for b in bytes {
            bits = (bits << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out.push(char::from(ALPHABET[((bits >> nbits) & 63) as usize]));
            }
        }
        if nbits > 0 {
            out.push(char::from(ALPHABET[((bits << (6 - nbits)) & 63) as usize]));
        }
        if !out.starts_with('-') {
            return out;
        }
    }
}

impl PrivateKafka {
    /// Formats a fresh broker on free ports, starts it and creates every topic of the
    /// catalog (`fleet_schemas::topics::ALL`) explicitly. Fails with instructions when
    /// the jars are missing.
    pub async fn start() -> anyhow::Result<PrivateKafka> {
        let libs = kafka_libs()?;
        let dir = tempfile::Builder::new().prefix("fleet-kafka-").tempdir()?;
        let (port, controller_port) = (free_port()?, free_port()?);
        anyhow::ensure!(port != controller_port, "free_port gave one port twice");
        let mut kafka = PrivateKafka {
            dir,
            port,
            controller_port,
            libs,
            child: None,
        };
        kafka.write_config()?;
        kafka.format()?;
        kafka.start_again().await?;
        Ok(kafka)
    }

    /// `127.0.0.1:<port>`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka://127.0.0.1:<port>`, the event-log URL of the roles.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.brokers())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.properties")
    }

    fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let template = repo_root().join("scripts/services/server.properties.in");
        let text = std::fs::read_to_string(&template)
            .with_context(|| format!("reading {}", template.display()))?;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(self.logs_dir())?;
        let mut config = text
            .replace("@KAFKA_VERSION@", &pinned_kafka_version()?)
            .replace("@HOST@", "127.0.0.1")
            .replace("@KAFKA_PORT@", &self.port.to_string())
            .replace("@CONTROLLER_PORT@", &self.controller_port.to_string())
            .replace("@DATA_DIR@", data.to_str().context("utf-8 path")?);
        if let Some(left) = config
            .lines()
            .find(|l| !l.starts_with('#') && l.contains('@'))
        {
            bail!(
                "{} has a placeholder this harness does not know: {left}",
                template.display()
            );
        }
        // A private single-test broker: fewer offsets partitions start faster (the last
        // value of a key wins in a properties file).
        config.push_str("\n# e2e PrivateKafka\noffsets.topic.num.partitions=3\n");
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    fn java(&self) -> Command {
        let mut cmd = Command::new(java_bin());
        cmd.arg("-Djava.awt.headless=true")
            .arg("-cp")
            .arg(self.libs.join("*"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn format(&self) -> anyhow::Result<()> {
        let tools_log = repo_root().join("scripts/services/tools-log4j2.xml");
        let out = self
            .java()
            .arg("-Xmx256m")
            .arg(format!(
                "-Dlog4j2.configurationFile=file:{}",
                tools_log.display()
            ))
            .args(["kafka.tools.StorageTool", "format", "--standalone", "-t"])
            .arg(kafka_cluster_id())
            .arg("-c")
            .arg(self.config_path())
            .output()
            .with_context(|| format!("running {} (Java 17+ needed)", java_bin().display()))?;
        if !out.status.success() {
            bail!(
                "StorageTool format failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Whether the JVM runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the broker again on the same ports and data (after [`PrivateKafka::stop`])
    /// and waits until every topic has a leader.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(), "the private Kafka broker already runs");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs_dir().join("kafka.out"))?;
        let err = out.try_clone()?;
        let log4j = repo_root().join("scripts/services/log4j2.xml");
        let java = self.java();
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"])
                .arg(java.get_program())
                .args(java.get_args())
                .current_dir(self.dir.path())
                .stdin(Stdio::null());
            c
        } else {
            java
        };
        cmd.args(KAFKA_HEAP)
            .args([
                "-server",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
            ])
            .arg(format!("-Dkafka.logs.dir={}", self.logs_dir().display()))
            .arg(format!(
                "-Dlog4j2.configurationFile=file:{}",
                log4j.display()
            ))
            .arg("kafka.Kafka")
            .arg(self.config_path())
            .stdout(out)
            .stderr(err);
        self.child = Some(cmd.spawn().context("starting the Kafka JVM")?);
        self.wait_ready().await
    }

    /// Waits for the port, then creates the topics (which waits for their leaders).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + KAFKA_START_TIMEOUT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if !self.is_running() {
                bail!(
                    "the private Kafka broker exited while starting\n{}",
                    self.log_tail(40)
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the private Kafka broker did not listen on {addr} within {KAFKA_START_TIMEOUT:?}\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut last = None;
        while Instant::now() < deadline {
            match self.create_topics().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            if !self.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "the private Kafka broker at {} did not become ready: {:#}\n{}",
            self.brokers(),
            last.unwrap_or_else(|| anyhow::anyhow!("exited")),
            self.log_tail(40)
        )
    }

    /// Creates every topic of the catalog (idempotent; waits for their leaders).
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        let options: fleet_event_log::EngineOptions =
            [("fleet.request.timeout.ms".to_owned(), "15000".to_owned())].into();
        let log = fleet_event_log::open(&self.url(), &options).await?;
        for t in fleet_schemas::topics::ALL {
            log.create_topic(
                t.name,
                fleet_event_log::TopicSpec {
                    partitions: t.partitions,
                    compacted: t.compacted,
                },
            )
            .await
            .with_context(|| format!("creating topic {}", t.name))?;
        }
        Ok(())
    }

    /// Stops the broker: SIGTERM (a controlled shutdown) and waits; SIGKILL if it has not
    /// exited after 30 s (then errs, after the kill).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        // The child is setpriv exec'ed into java: one pid.
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + KAFKA_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
        bail!("the private Kafka broker did not stop within {KAFKA_STOP_TIMEOUT:?} of SIGTERM; killed")
    }

    /// The last lines of the broker's output and server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["kafka.out", "server.log"] {
            let text = std::fs::read_to_string(self.logs_dir().join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- private Kafka {name} (last lines) ---\n{}\n",
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        out
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
