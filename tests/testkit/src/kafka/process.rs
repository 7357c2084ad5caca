//! Process side of the test broker: setup (tools, jars), spawning tied to
//! the test process, and cleanup at exit.

use super::*;

impl KafkaBroker {
    pub(super) fn write_config(&self) -> Result<()> {
        let data = self.dir.join("data");
        let config = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{cport}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
             log.dirs={data}\n\
             num.partitions=1\n\
             auto.create.topics.enable=true\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=1\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n\
             num.network.threads=2\n\
             num.io.threads=2\n\
             background.threads=2\n\
             num.recovery.threads.per.data.dir=1\n",
            port = self.port,
            cport = self.controller_port,
            data = data.display(),
        );
        fs::write(self.dir.join("server.properties"), config)?;
        let log4j = format!(
            "rootLogger.level=INFO\n\
             rootLogger.appenderRef.file.ref=file\n\
             appender.file.type=File\n\
             appender.file.name=file\n\
             appender.file.fileName={}\n\
             appender.file.layout.type=PatternLayout\n\
             appender.file.layout.pattern=[%d] %p %m (%c)%n\n",
            self.dir.join("broker.log").display()
        );
        fs::write(self.dir.join("log4j2.properties"), log4j)?;
        Ok(())
    }

    fn java(&self, main: &str) -> Command {
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xms64m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            self.dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(&self.classpath)
        .arg(main)
        .current_dir(&self.dir)
        .stdin(Stdio::null());
        cmd
    }

    pub(super) fn format(&self) -> Result<()> {
        let cluster_id = random_cluster_id();
        let out = self
            .java("kafka.tools.StorageTool")
            .args(["format", "-t", &cluster_id, "-c"])
            .arg(self.dir.join("server.properties"))
            .output()
            .context("run kafka.tools.StorageTool")?;
        if !out.status.success() {
            bail!(
                "kafka storage format failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub(super) fn spawn_and_wait(&self) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))?;
        let mut cmd = self.java("kafka.Kafka");
        cmd.arg(self.dir.join("server.properties"))
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = spawn_tied_to_process(cmd).context("spawn kafka.Kafka")?;
        remember_pid(child.id());
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        self.wait_ready()
            .with_context(|| format!("broker not ready\n{}", self.log_tail(40)))
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = anyhow!("not tried");
        while Instant::now() < deadline {
            if !self.is_running() {
                bail!("broker process exited during start-up");
            }
            match self.probe() {
                Ok(()) => return Ok(()),
                Err(e) => last_err = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(last_err.context(format!("not ready after {START_TIMEOUT:?}")))
    }

    /// Ready = ApiVersions answers and Metadata lists this broker (registered, unfenced).
    fn probe(&self) -> Result<()> {
        let mut conn = self.connect()?;
        conn.api_versions()?;
        let md = conn.metadata(Some(&[]))?;
        if md.brokers.is_empty() {
            bail!("broker not registered yet");
        }
        Ok(())
    }
}

/// Spawns `cmd` from a thread that lives until the process exits, with
/// `PR_SET_PDEATHSIG(SIGKILL)`: the signal fires when the *spawning thread*
/// exits, so spawning from a short-lived test thread would kill the broker
/// when that test ends.
pub(super) fn spawn_tied_to_process(cmd: Command) -> Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            std::thread::Builder::new()
                .name("kafka-spawner".into())
                .spawn(move || {
                    // Runs until the process exits (the Sender is in a static).
                    for (mut cmd, reply) in rx {
                        let parent = std::process::id() as libc::pid_t;
                        // SAFETY: pre_exec runs in the forked child before exec;
                        // prctl and getppid are async-signal-safe syscalls.
                        unsafe {
                            cmd.pre_exec(move || {
                                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
                                {
                                    return Err(std::io::Error::last_os_error());
                                }
                                if libc::getppid() != parent {
                                    // The parent died before prctl took effect.
                                    libc::_exit(1);
                                }
                                Ok(())
                            });
                        }
                        let _ = reply.send(cmd.spawn());
                    }
                })
                .expect("spawn kafka-spawner thread");
            Mutex::new(tx)
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.send((cmd, reply_tx))
        .map_err(|_| anyhow!("kafka-spawner thread is gone"))?;
    Ok(reply_rx.recv()??)
}

pub(super) fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned and have not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

// ---------------------------------------------------------------- exit cleanup

struct Cleanup {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    pids: Vec::new(),
    dirs: Vec::new(),
});

pub(super) fn remember_pid(pid: u32) {
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pids
        .push(pid);
}

pub(super) fn forget_pid(pid: u32) {
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pids
        .retain(|&p| p != pid);
}

pub(super) fn register_cleanup(dir: &Path) {
    static ONCE: OnceLock<()> = OnceLock::new();
    CLEANUP
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .dirs
        .push(dir.to_path_buf());
    ONCE.get_or_init(|| {
        // SAFETY: registers a plain extern "C" fn; atexit has no other preconditions.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

extern "C" fn cleanup_at_exit() {
    // try_lock: never block process exit on a lock some dying thread held.
    let Ok(c) = CLEANUP.try_lock() else { return };
    for &pid in &c.pids {
        signal(pid, libc::SIGKILL);
        // SAFETY: reaps our own child; a null status pointer is allowed.
        unsafe {
            libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
        }
    }
    for d in &c.dirs {
        let _ = fs::remove_dir_all(d);
    }
}

/// Removes temp dirs of earlier test processes that no longer exist (killed runs).
pub(super) fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

// ---------------------------------------------------------------- setup

pub(super) const INSTALL_HINT: &str = "the Kafka tests need a Java 17+ runtime and Maven; on Debian/Ubuntu: \
     `sudo apt-get install -y openjdk-17-jdk-headless maven` (or run `bash .ci/run`, which installs them)";

pub(super) fn check_tools() -> Result<()> {
    let java = Command::new("java")
        .arg("-version")
        .output()
        .map_err(|e| anyhow!("`java` not found ({e}): {INSTALL_HINT}"))?;
    let text = String::from_utf8_lossy(&java.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .unwrap_or(0);
    if !java.status.success() || major < 17 {
        bail!("`java -version` reports {text:?}: Kafka 4.x needs Java 17+; {INSTALL_HINT}");
    }
    Command::new("mvn")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| anyhow!("`mvn` not found ({e}): {INSTALL_HINT}"))?;
    Ok(())
}

pub(super) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Downloads the Kafka jars once into `<workspace>/target/kafka-dist/lib`
/// (re-downloads when the pom changes) and returns that dir.
pub(super) fn ensure_dist() -> Result<PathBuf> {
    let root = workspace_root();
    let pom_path = root.join("tests/testkit/kafka/pom.xml");
    let pom = fs::read(&pom_path).with_context(|| format!("read {pom_path:?}"))?;
    let dist = std::env::var_os("CORECAST_KAFKA_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/kafka-dist"));
    fs::create_dir_all(&dist).with_context(|| format!("mkdir {dist:?}"))?;
    let lock = File::create(dist.join(".lock"))?;
    // SAFETY: flock on an fd we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("flock {dist:?}: {}", std::io::Error::last_os_error());
    }
    let lib = dist.join("lib");
    let stamp = dist.join("pom.xml.installed");
    if fs::read(&stamp).ok().as_deref() == Some(&pom[..]) && lib.is_dir() {
        return Ok(lib);
    }
    let tmp = dist.join("lib.tmp");
    let _ = fs::remove_dir_all(&tmp);
    let _ = fs::remove_dir_all(&lib);
    eprintln!("testkit: downloading Apache Kafka jars from Maven Central into {lib:?} (once)");
    let out = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom_path)
        .arg("dependency:copy-dependencies")
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", tmp.display()))
        .stdin(Stdio::null())
        .output()
        .context("run mvn")?;
    if !out.status.success() {
        bail!(
            "mvn dependency:copy-dependencies failed (needs network access to Maven Central):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::rename(&tmp, &lib)?;
    fs::write(&stamp, &pom)?;
    Ok(lib)
}

/// A free loopback port below the kernel's ephemeral range, so that the
/// outgoing connections of other tests (which take ephemeral ports) cannot
/// grab it between this check and the broker's bind, nor after a restart.
pub(super) fn free_port() -> Result<u16> {
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > 12_000 {
        let mut seed = [0u8; 4];
        if let Ok(mut f) = File::open("/dev/urandom") {
            let _ = f.read_exact(&mut seed);
        }
        let span = low - 11_000;
        let start = u32::from_ne_bytes(seed) % span;
        for i in 0..200 {
            let port = 10_000 + (start + i * 7919) % span;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
                return Ok(l.local_addr()?.port());
            }
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.
pub(super) fn random_cluster_id() -> String {
    let mut raw = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut raw);
    }
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(22);
    let mut bits = 0u32;
    let mut nbits = 0;
    for b in raw {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    out
}
