//! `beep serve` as an operator runs it, shared by the tests and the cold-start bench: on a
//! free loopback port, with no `BEEP_*` variable inherited, stopped with SIGTERM.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BEEP: &str = env!("CARGO_BIN_EXE_beep");

/// `beep` with no `BEEP_*` variable inherited from the test environment.
pub fn beep(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BEEP);
    command.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("BEEP_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs a one-shot command, asserts it succeeded (showing its stderr if not), returns stdout.
pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// `beep serve` on a free port, ready; stopped with SIGTERM.
pub struct Served {
    child: std::process::Child,
    pub port: u16,
}

impl Served {
    pub fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        // Its callers speak to it with reqwest, which needs rustls's provider in this process,
        // where no app has installed it when such a test runs alone.
        beep::platform::install_crypto_provider();
        let port = free_port();
        let mut command = beep(dir);
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                "data",
            ])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let served = Self {
            child: command.spawn().unwrap(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(response) = http_get(port, "/readyz") {
                assert!(response.starts_with("HTTP/1.1 200"), "{response}");
                return served;
            }
            assert!(Instant::now() < deadline, "beep serve never answered");
            // Fine-grained: the cold-start bench times this loop.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The most resident memory the process has used so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGTERM, then the exit status and everything the process printed.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.pid().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let mut printed = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            // Returns at end of output, which comes when the process exits.
            std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, printed);
            }
            assert!(Instant::now() < deadline, "beep did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Served {
    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Served {
    /// A failed test must not leave a server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
