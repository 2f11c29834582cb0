//! keyward as a child process: `keyward serve` or `keyward gateway` on port 0, its standard
//! output read up to the line saying it is listening, its log (debug level) in a file, and
//! the CLI pointed at it. The binary's path is passed in ([`Binary::at`]).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

/// How long a test waits for a process (to exit after SIGTERM, or for what it sends) before
/// it fails: a bound against hanging, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The keyward binary under test. The test crate passes its path in:
/// `Binary::at(env!("CARGO_BIN_EXE_keyward"))`, a variable that exists only while compiling
/// the binary crate's own integration tests.
#[derive(Clone, Copy, Debug)]
pub struct Binary(&'static str);

impl Binary {
    /// The binary at `path`.
    pub const fn at(path: &'static str) -> Self {
        Self(path)
    }

    /// A command running the binary, for the tests that drive it by hand (start-up errors,
    /// the CLI without a server).
    pub fn command(self) -> Command {
        Command::new(self.0)
    }

    /// `keyward serve` on 127.0.0.1:0 with its data and its log in `data_dir`.
    pub fn serve(self, data_dir: &Path) -> Process {
        let dir = data_dir.to_str().unwrap();
        self.serve_with(&["--data-dir", dir], data_dir)
    }

    /// `keyward serve` on 127.0.0.1:0 with `args` (for example `--store URL`), its log in
    /// `log_dir`.
    pub fn serve_with(self, args: &[&str], log_dir: &Path) -> Process {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        self.start(&all, &[], log_dir, "listening on")
    }

    /// `keyward gateway --config CONFIG`, its log in `log_dir`; [`Process::addr`] is the
    /// gateway's listener, [`Process::addr_after`]`("admin API listening on")` the admin API's.
    pub fn gateway(self, config: &Path, log_dir: &Path) -> Process {
        let config = config.to_str().unwrap();
        self.start(
            &["gateway", "--config", config],
            &[],
            log_dir,
            "gateway listening on",
        )
    }

    /// `keyward ARGS` with `env` added, its log at debug level appended to
    /// `log_dir/keyward.log`, its standard output read up to the line containing `ready`
    /// (which must name the address, `… http://ADDR`). The OTLP settings of the test's own
    /// environment are removed, so only `args` and `env` turn trace export on.
    pub fn start(
        self,
        args: &[&str],
        env: &[(&str, &str)],
        log_dir: &Path,
        ready: &str,
    ) -> Process {
        std::fs::create_dir_all(log_dir).unwrap();
        let log_path = log_dir.join("keyward.log");
        // Appended: a test that restarts a server in the same directory reads both runs.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut command = self.command();
        command
            .args(args)
            .env("KEYWARD_LOG", "debug")
            .env_remove("KEYWARD_OTLP_ENDPOINT")
            .env_remove("KEYWARD_OTLP_SERVICE_NAME")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            // The process prints its address after opening the store; EOF means it exited.
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keyward {args:?} exited early: {lines:?}\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            let done = line.contains(ready);
            lines.push(line.trim_end().to_owned());
            if done {
                break;
            }
        }
        let root_key = lines.iter().find_map(|l| {
            l.trim()
                .strip_prefix("kwroot_")
                .map(|rest| format!("kwroot_{rest}"))
        });
        let mut process = Process {
            child: Some(child),
            binary: self,
            _stdout: stdout,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            root_key,
            stdout_lines: lines,
            log_path,
        };
        process.addr = process.addr_after(ready);
        process
    }
}

/// A keyward child process; killed if the test ends before it stopped the process.
pub struct Process {
    child: Option<Child>,
    binary: Binary,
    /// Kept open, so the process never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// The address on the line the process was waited for.
    pub addr: SocketAddr,
    /// The root key, if this start bootstrapped one and printed it.
    pub root_key: Option<String>,
    /// What the process printed, up to and including the line it was waited for.
    pub stdout_lines: Vec<String>,
    /// Where its log (standard error, at debug level) is written.
    pub log_path: PathBuf,
}

impl Process {
    /// The address printed after `marker` (`… marker http://ADDR …`).
    pub fn addr_after(&self, marker: &str) -> SocketAddr {
        let line = self
            .stdout_lines
            .iter()
            .find(|l| l.contains(marker))
            .unwrap_or_else(|| panic!("{marker}: {:?}", self.stdout_lines));
        line.split(marker)
            .nth(1)
            .and_then(|rest| rest.split("http://").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address after {marker}: {line}"))
            .parse()
            .unwrap()
    }

    /// Runs a CLI command against this process with `root_key`.
    pub fn cli(&self, root_key: &str, args: &[&str]) -> Output {
        self.binary
            .command()
            .args(args)
            .env("KEYWARD_URL", format!("http://{}", self.addr))
            .env("KEYWARD_ROOT_KEY", root_key)
            .output()
            .unwrap()
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the process as an operator would (SIGTERM), so its shutdown code runs (final
    /// flushes), and waits at most [`PATIENCE`] for it; fails unless it exits with success.
    pub fn terminate(&mut self) {
        let status = self.signal_and_wait();
        assert!(
            status.success(),
            "keyward exited with {status} after SIGTERM:\n{}",
            self.log()
        );
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn signal_and_wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the process was already stopped");
        let pid = child.id().to_string();
        let signal = |name: &str| Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(signal("-TERM").success(), "kill -TERM {pid} failed");
        // Waited for on a thread of its own, so the wait can have a bound.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(PATIENCE) {
            Ok(status) => status.unwrap(),
            Err(_) => {
                signal("-KILL");
                panic!(
                    "keyward did not exit within {PATIENCE:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
