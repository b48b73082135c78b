//! A private tmux server to run prof in a real terminal, driven with keys like a user would
//! (the `prof top` end-to-end tests).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: a loaded 2-core machine can be slow to start an interpreter.
const WAIT: Duration = Duration::from_secs(60);

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Is tmux installed? Says so on stderr when it is not (the caller skips its test).
pub fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: tmux not found");
    }
    ok
}

/// A private tmux server with one 160x50 pane running a plain bash; killed on drop.
pub struct Tmux {
    socket: String,
    /// The server's socket file, which kill-server leaves behind.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    pub fn start() -> Tmux {
        let n = SESSIONS.fetch_add(1, Ordering::SeqCst);
        let mut tmux = Tmux {
            socket: format!("prof-test-{}-{n}", std::process::id()),
            socket_path: None,
        };
        let out = tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "50",
            "-s",
            "main",
            "-e",
            "PS1=prompt$ ",
            "-e",
            "PROMPT_COMMAND=",
            "-e",
            "TERM=xterm-256color",
            "bash",
            "--norc",
            "--noprofile",
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        tmux.socket_path = Some(PathBuf::from(tmux.var("socket_path")));
        tmux.wait_for("the shell prompt", |s| s.contains("prompt$"));
        tmux
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run tmux")
    }

    /// Type a line into the shell.
    pub fn type_line(&self, line: &str) {
        self.run(&["send-keys", "-t", "main", "-l", line]);
        self.keys(&["Enter"]);
    }

    /// Press keys (tmux key names: `Enter`, `Escape`, `Home`, `Space`, `q`, ...).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        let out = self.run(&args);
        assert!(out.status.success(), "tmux send-keys {keys:?}: {out:?}");
    }

    /// The pane's text, wrapped lines joined.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-J", "-t", "main"]).stdout)
            .into_owned()
    }

    /// A tmux format variable of the pane (`alternate_on`, `cursor_flag`, `pane_pid`).
    pub fn var(&self, name: &str) -> String {
        let out = self.run(&[
            "display-message",
            "-p",
            "-t",
            "main",
            &format!("#{{{name}}}"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Wait until the screen satisfies `ok`; returns that screen, or fails showing it.
    pub fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() >= deadline {
                panic!("timed out waiting for {what}; the screen:\n{s}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Its panes get SIGHUP, which prof answers by restoring and exiting.
        let _ = self.run(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}
