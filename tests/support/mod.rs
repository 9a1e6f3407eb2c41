//! Shared pieces of the end-to-end tests: free ports, the real `shoal` binary as daemon and
//! demo backends (killed on drop), readiness polling, and a tiny metrics reader.

#![allow(dead_code)] // each test binary uses its own subset of these helpers

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A free loopback port. Ports are walked from a per-process base so that test binaries
/// running at the same time rarely race for the same one; binding proves it is free now.
/// They stay below Linux's ephemeral range (32768 and up by default): there, a connection
/// any test opens can take the port between this check and the daemon's bind.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        20_000 + (std::process::id() % 120) as u16 * 100,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. libc::SIGTERM) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for exit up to `limit`; returns the exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a daemon stops its containers even when a test failed; SIGKILL if
    /// it has not ended after 20 s.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            if self.wait_exit(Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// Starts `shoal demo-backend` on a fresh port with `SHOAL_REPLICA=name`; returns once it
/// answers `/healthz`.
pub fn demo_backend(name: &str) -> (Proc, SocketAddr) {
    let port = free_port();
    let child = Command::new(SHOAL)
        .args([
            "demo-backend",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .env("SHOAL_REPLICA", name)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start demo-backend");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let proc = Proc {
        child,
        name: name.to_string(),
    };
    wait_http_ok(addr, "/healthz", Duration::from_secs(10));
    (proc, addr)
}

/// A daemon started from a config text written into a temp dir.
pub struct Daemon {
    pub proc: Proc,
    pub admin: SocketAddr,
    pub dir: TempDir,
}

impl Daemon {
    /// Writes `config` (with `{ADMIN}` replaced by a free admin address) and runs `shoal up`.
    /// Returns once `/readyz` answers 200.
    pub fn start(config: &str) -> Daemon {
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = TempDir::new("daemon");
        let path = dir.path().join("shoal.yaml");
        let config = config.replace("{ADMIN}", &admin.to_string());
        std::fs::write(&path, config).expect("write config");
        let child = Command::new(SHOAL)
            .args(["up", "-c"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("shoal.log")).expect("log file"),
            ))
            .spawn()
            .expect("start shoal up");
        let mut daemon = Daemon {
            proc: Proc {
                child,
                name: "shoal".into(),
            },
            admin,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(resp) = http_get(admin, "/readyz", &[]) {
                if resp.status == 200 {
                    return daemon;
                }
            }
            if let Ok(Some(status)) = daemon.proc.child.try_wait() {
                panic!("shoal up exited with {status}:\n{}", daemon.log());
            }
            assert!(
                Instant::now() < deadline,
                "shoal did not become ready:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shoal.log")).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics", &[]).expect("metrics").body
    }

    /// Open file descriptors of the daemon (sockets included).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The value of the sample of `name` whose labels include every `key="value"` in `labels`.
pub fn metric_value(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One GET over a fresh connection with `Connection: close`.
pub fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut request = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    raw_request(addr, request.as_bytes(), Duration::from_secs(30))
}

/// Writes `bytes` and reads until the peer closes; parses the answer as HTTP/1.1.
pub fn raw_request(addr: SocketAddr, bytes: &[u8], limit: Duration) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(limit))?;
    stream.write_all(bytes)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

pub fn parse_response(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `path` until it answers 200, panicking after `limit`.
pub fn wait_http_ok(addr: SocketAddr, path: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if http_get(addr, path, &[]).is_ok_and(|r| r.status == 200) {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}{path} never answered 200");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 50 ms until it returns Some, panicking with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicU16 = AtomicU16::new(0);
        let path = std::env::temp_dir().join(format!(
            "shoal-test-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// True when the tests run in CI, where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (returns false) outside CI when `what` is missing; fails in CI.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    assert!(!in_ci(), "{what} is required in CI (CI=true) but missing");
    eprintln!("skipping: {what} is missing (install it, or run the README's test command)");
    false
}

/// How a hand-written test upstream behaves.
#[derive(Debug, Clone, Copy)]
pub enum Misbehaviour {
    /// Answers every request `hello from <name>` after this delay (keep-alive).
    Slow(Duration),
    /// Reads the request, then closes with a TCP reset.
    Reset,
    /// Reads the request and never answers.
    Silent,
}

/// A test upstream on a fresh loopback port, served by plain threads; it stops with the test.
pub fn odd_backend(name: &'static str, how: Misbehaviour) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind odd backend");
    let addr = listener.local_addr().expect("odd backend address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve_odd(stream, name, how));
        }
    });
    addr
}

fn serve_odd(mut stream: TcpStream, name: &str, how: Misbehaviour) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buffer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buffer.len(), |p| p + 4);
        buffer.drain(..end);
        match how {
            Misbehaviour::Slow(delay) => {
                std::thread::sleep(delay);
                let body = format!("hello from {name}\n");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                if stream.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Misbehaviour::Reset => {
                let _ = socket_linger_zero(&stream);
                return;
            }
            Misbehaviour::Silent => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
        }
    }
}

/// SO_LINGER 0 makes the close that follows send RST instead of FIN.
fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A cleartext HTTP/2 client (prior knowledge) with a runtime to drive it from a test.
pub struct H2cClient {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

pub fn h2c_client() -> H2cClient {
    H2cClient {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        client: reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client"),
    }
}

impl H2cClient {
    /// Runs `test` with the client to completion.
    pub fn block_on<F: std::future::Future<Output = ()>>(
        &self,
        test: impl FnOnce(reqwest::Client) -> F,
    ) {
        self.runtime.block_on(test(self.client.clone()));
    }
}
