//! `prof top`: a live, full-screen view of where a process spends its time.
//!
//! Three parties: the sampler runs on its own thread exactly as for `prof record` and
//! sends samples over the same bounded channel; this thread drains that channel every
//! few milliseconds into a [`Profile`] it owns, reads keys, and draws the screen only
//! once per `--delay` or after a key. Drawing is never on the sampler's path: the
//! sampler never waits for the channel (it counts a sample lost instead), so a slow
//! terminal costs at most a late refresh, never a late tick.

use std::io::{BufWriter, IsTerminal, Stdout, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam_channel::{Receiver, TryRecvError, bounded};
use crossterm::event::KeyEvent;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use crossterm::{cursor, execute};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::cli::TopArgs;
use crate::commands::record::{check_target_args, sampler_options, start_target_logged};
use crate::diagnose::Diagnosis;
use crate::process::spawn::{self, Launched};
use crate::profile::{Profile, ProfileMeta, ProfileOptions};
use crate::sample::Sample;
use crate::sampler::{self, LiveStats, SamplerOptions, SamplerStats};
use crate::target::Target;
use crate::tui::app::{Action, App};
use crate::tui::input::KeyParser;
use crate::tui::render;
use crate::tui::view::{Status, TargetState};

/// How often the channel is drained and the keyboard looked at, at the longest.
const POLL: Duration = Duration::from_millis(20);
/// The longest one drain may take before keys get a look in.
const DRAIN_BUDGET: Duration = Duration::from_millis(50);
/// How long after an Esc byte the rest of a key's sequence may come (terminals send a
/// sequence in one write; a person cannot type the next key this fast).
const ESC_WAIT: Duration = Duration::from_millis(30);

/// True while the terminal is in raw mode on the alternate screen.
static TERMINAL_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Run `prof top`; returns the exit code (the launched command's, in launch mode).
pub fn run(args: &TopArgs) -> Result<i32> {
    let t = &args.target;
    check_target_args(t)?;
    if !(args.delay > 0.0 && args.delay.is_finite()) {
        bail!(
            "--delay must be a positive number of seconds, not {}",
            args.delay
        );
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("prof top needs a terminal; to profile without one, use `prof record`");
    }
    let stop = spawn::install_stop_handlers();
    // The command's output would draw over the screen: it goes to a file instead.
    let log = (!t.process.command.is_empty())
        .then(|| std::env::temp_dir().join(format!("prof-top-{}.log", std::process::id())));
    let (root, launched, title) = start_target_logged(t, log.as_deref())?;
    let pid = match &root {
        Ok(target) => target.target().pid(),
        Err(pid) => *pid,
    };
    let mut launched = launched;

    let opts = ProfileOptions {
        full_filenames: t.stacks.full_filenames,
        ..ProfileOptions::default()
    };
    let meta = ProfileMeta::new(title, t.process.rate, SystemTime::now());
    let sampler_opts = SamplerOptions {
        activity: true,
        states: true,
        ..sampler_options(t, None)
    };
    let keep = sampler_opts.clone();
    let live = Arc::new(LiveStats::default());
    // The sampler's own stop flag: set on quit, or when a signal sets the global one.
    let halt = Arc::new(AtomicBool::new(false));
    let (tx, rx) = bounded(4096);
    let start = Instant::now();
    let spawned = {
        let live = Arc::clone(&live);
        let halt = Arc::clone(&halt);
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || sampler::run_live(root, &sampler_opts, &tx, &halt, Some(&live)))
    };
    let sampler = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            if let Some(child) = launched {
                child.stop();
            }
            return Err(e).context("cannot start the sampler thread");
        }
    };

    let mut app = App::new();
    app.native = t.stacks.native.then_some(true);
    let mut top = Top {
        app,
        profile: Profile::new(meta, opts),
        diagnosis: Diagnosis::new(),
        keep,
        frozen: None,
        live,
        base: Baseline::at(start),
        sampler: Some(sampler),
        final_stats: None,
        ended: None,
        launched_mode: launched.is_some(),
        exit_code: None,
        status: Status {
            pid: Some(pid),
            log: log.clone(),
            ..Status::default()
        },
    };
    // A panic on this thread must still lead to the cleanup below (the child, the
    // sampler); the panic hook has already restored the terminal and printed it.
    let ui = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ui(&mut top, &rx, &mut launched, stop, args.delay)
    }))
    .unwrap_or_else(|_| Err(anyhow!("internal error: the display failed (see above)")));
    restore_terminal();

    // The channel stays open until the sampler has stopped, so that the samples of its
    // last tick are not counted as lost.
    halt.store(true, Ordering::SeqCst);
    top.join_sampler();
    drop(rx);
    let code = match launched {
        // Asked to stop if the user quit while it was running.
        Some(child) => child.stop(),
        None => 0,
    };
    summary(&top);
    ui.map(|()| code)
}

/// Where the counters stood at the start or the last reset.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    at: Instant,
    ticks: u64,
    dropped_ticks: u64,
    errors: u64,
    lost: u64,
}

impl Baseline {
    fn at(at: Instant) -> Baseline {
        Baseline {
            at,
            ticks: 0,
            dropped_ticks: 0,
            errors: 0,
            lost: 0,
        }
    }
}

/// The state of the event loop.
struct Top {
    app: App,
    profile: Profile,
    /// Every thread's states, idle ones included, for the header and the threads view.
    diagnosis: Diagnosis,
    /// The sampler's options, to tell which samples go into the profile.
    keep: SamplerOptions,
    /// The profile and figures on screen while paused.
    frozen: Option<(Profile, Status)>,
    live: Arc<LiveStats>,
    base: Baseline,
    sampler: Option<std::thread::JoinHandle<SamplerStats>>,
    final_stats: Option<SamplerStats>,
    /// When the sampler finished (the target exited or was not Python).
    ended: Option<Instant>,
    launched_mode: bool,
    /// The launched command's exit code, once it has exited.
    exit_code: Option<i32>,
    /// The figures, as of the last update.
    status: Status,
}

impl Top {
    /// Take every sample waiting in the channel (within a time budget, so that keys
    /// are never starved). Returns false once the sampler has finished.
    fn drain(&mut self, rx: &Receiver<Vec<Sample>>) -> bool {
        let deadline = Instant::now() + DRAIN_BUDGET;
        loop {
            match rx.try_recv() {
                Ok(batch) => {
                    for s in &batch {
                        self.diagnosis.add(s);
                        if sampler::profiled(&self.keep, s) {
                            self.profile.add(s);
                        }
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
            if Instant::now() >= deadline {
                return true;
            }
        }
    }

    /// Wait for the sampler thread and publish its final figures.
    fn join_sampler(&mut self) {
        if let Some(handle) = self.sampler.take() {
            // A panicked sampler has already said so through the panic hook.
            let stats = handle.join().unwrap_or_default();
            self.live.ticks.store(stats.ticks, Ordering::Relaxed);
            self.live
                .dropped_ticks
                .store(stats.dropped_ticks, Ordering::Relaxed);
            self.live.errors.store(stats.errors, Ordering::Relaxed);
            self.live.lost.store(stats.lost, Ordering::Relaxed);
            self.ended.get_or_insert_with(Instant::now);
            self.final_stats = Some(stats);
        }
    }

    /// Bring the figures up to date.
    fn update_status(&mut self) {
        let l = &self.live;
        let b = &self.base;
        let s = &mut self.status;
        let now = self.ended.unwrap_or_else(Instant::now);
        s.elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        s.ticks = l.ticks.load(Ordering::Relaxed).saturating_sub(b.ticks);
        s.dropped_ticks = l
            .dropped_ticks
            .load(Ordering::Relaxed)
            .saturating_sub(b.dropped_ticks);
        s.errors = l.errors.load(Ordering::Relaxed).saturating_sub(b.errors);
        s.lost = l.lost.load(Ordering::Relaxed).saturating_sub(b.lost);
        if s.python.is_none() {
            s.python = l.python.get().cloned();
        }
        s.states = (self.diagnosis.samples() > 0).then(|| self.diagnosis.report(None));
        s.target = match &self.final_stats {
            None if s.python.is_some() || !self.launched_mode => TargetState::Running,
            None => TargetState::Starting,
            Some(f)
                if self.launched_mode && !f.root_attached && self.profile.total_samples() == 0 =>
            {
                TargetState::NotPython
            }
            Some(_) => TargetState::Exited {
                code: self.exit_code,
            },
        };
    }

    /// Forget everything sampled so far; the figures restart from now.
    fn reset(&mut self) {
        let meta = ProfileMeta::new(
            self.profile.meta().title.clone(),
            self.profile.meta().requested_rate,
            SystemTime::now(),
        );
        self.profile = Profile::new(meta, *self.profile.options());
        self.diagnosis = Diagnosis::new();
        let l = &self.live;
        self.base = Baseline {
            at: Instant::now(),
            ticks: l.ticks.load(Ordering::Relaxed),
            dropped_ticks: l.dropped_ticks.load(Ordering::Relaxed),
            errors: l.errors.load(Ordering::Relaxed),
            lost: l.lost.load(Ordering::Relaxed),
        };
        self.update_status();
        if self.frozen.is_some() {
            self.freeze();
        }
    }

    fn freeze(&mut self) {
        self.frozen = Some((self.profile.clone(), self.status.clone()));
    }

    fn draw(&mut self, terminal: &mut Terminal<CrosstermBackend<BufWriter<Stdout>>>) -> Result<()> {
        let Top {
            app,
            profile,
            frozen,
            status,
            ..
        } = self;
        let (profile, shown) = match frozen {
            Some((p, s)) => {
                // Frozen numbers, but whether the target still runs is news.
                let mut s = s.clone();
                s.target = status.target;
                (&*p, s)
            }
            None => (&*profile, status.clone()),
        };
        terminal
            .draw(|f| render::draw(f, app, profile, &shown))
            .context("cannot draw on the terminal")?;
        Ok(())
    }
}

/// The event loop: drain samples, watch the child and the signals, read keys, draw.
fn ui(
    top: &mut Top,
    rx: &Receiver<Vec<Sample>>,
    launched: &mut Option<Launched>,
    stop: &AtomicBool,
    delay: f64,
) -> Result<()> {
    let mut terminal = enter_terminal()?;
    let mut keyboard = Keyboard::new();
    let mut last_size = window_size();
    let delay = Duration::from_secs_f64(delay);
    let mut next_refresh = Instant::now();
    let mut dirty = true;
    loop {
        if top.sampler.is_some() && !top.drain(rx) {
            // Every sampled process is gone (or the command never ran Python).
            top.join_sampler();
            dirty = true;
        }
        if top.exit_code.is_none()
            && let Some(child) = launched.as_mut()
            && let Some(code) = child.try_wait()
        {
            top.exit_code = Some(code);
            dirty = true;
        }
        if stop.load(Ordering::SeqCst) {
            // SIGTERM, SIGHUP or a SIGINT not from the keyboard (raw mode turns Ctrl-C
            // into a key): leave cleanly.
            return Ok(());
        }
        if !TERMINAL_ACTIVE.load(Ordering::SeqCst) {
            bail!("internal error: a thread panicked (see above)");
        }
        let now = Instant::now();
        let old_target = top.status.target;
        top.update_status();
        if top.status.target != old_target {
            dirty = true;
        }
        if now >= next_refresh {
            // While paused the screen shows frozen data: nothing to refresh.
            dirty |= top.frozen.is_none();
            next_refresh = now + delay;
        }
        if dirty {
            top.draw(&mut terminal)?;
            dirty = false;
        }
        let wait = next_refresh
            .saturating_duration_since(Instant::now())
            .min(POLL);
        let keys = match keyboard.wait(wait) {
            Input::Keys(keys) => keys,
            // The terminal hung up (a closed window): nobody is watching any more.
            Input::Gone => return Ok(()),
        };
        for k in keys {
            match top.app.handle_key(k) {
                Action::Quit => return Ok(()),
                Action::None => {}
                Action::Redraw => dirty = true,
                Action::Pause => {
                    top.freeze();
                    dirty = true;
                }
                Action::Resume => {
                    top.frozen = None;
                    dirty = true;
                }
                Action::Reset => {
                    top.reset();
                    dirty = true;
                }
            }
        }
        let size = window_size();
        if size != last_size {
            // ratatui resizes its buffers on the next draw.
            last_size = size;
            dirty = true;
        }
    }
}

/// What the terminal had to say.
enum Input {
    /// Keys typed (possibly none).
    Keys(Vec<KeyEvent>),
    /// The terminal is gone (end of file or hang-up).
    Gone,
}

/// Keys from stdin, read with poll(2) and parsed by [`KeyParser`]: crossterm's own
/// reader spins forever once the terminal hangs up (see `tui::input`).
struct Keyboard {
    parser: KeyParser,
    /// When the incomplete sequence now pending arrived.
    pending_since: Option<Instant>,
}

impl Keyboard {
    fn new() -> Keyboard {
        Keyboard {
            parser: KeyParser::new(),
            pending_since: None,
        }
    }

    /// Wait up to `timeout` for keys (shorter while an Esc waits to be told apart from
    /// the start of a sequence).
    fn wait(&mut self, timeout: Duration) -> Input {
        let timeout = if self.parser.has_pending() {
            timeout.min(ESC_WAIT)
        } else {
            timeout
        };
        let mut pfd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // Rounded up, so that a sub-millisecond wait does not become a busy loop.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            // A timeout, or EINTR from a signal (the loop looks at the stop flag next).
            let waited = self.pending_since.is_some_and(|t| t.elapsed() >= ESC_WAIT);
            if waited {
                self.pending_since = None;
                return Input::Keys(self.parser.flush());
            }
            return Input::Keys(Vec::new());
        }
        if pfd.revents & libc::POLLIN != 0 {
            let mut buf = [0u8; 1024];
            // SAFETY: reading into a buffer we own, of its length; poll said it won't block.
            let r = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if r == 0 {
                return Input::Gone;
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock => {
                        Input::Keys(Vec::new())
                    }
                    _ => Input::Gone,
                };
            }
            let keys = self.parser.feed(&buf[..r as usize]);
            self.pending_since = self
                .parser
                .has_pending()
                .then(|| self.pending_since.unwrap_or_else(Instant::now));
            return Input::Keys(keys);
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Input::Gone;
        }
        Input::Keys(Vec::new())
    }
}

/// The terminal's size in cells, from stdout.
fn window_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ fills the winsize we pass.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0)
            .then_some((ws.ws_col, ws.ws_row))
    }
}

/// Raw mode, alternate screen, hidden cursor; restored by [`restore_terminal`], which a
/// panic hook also calls.
fn enter_terminal() -> Result<Terminal<CrosstermBackend<BufWriter<Stdout>>>> {
    install_panic_hook();
    enable_raw_mode().context("cannot set up the terminal")?;
    TERMINAL_ACTIVE.store(true, Ordering::SeqCst);
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout());
    execute!(out, EnterAlternateScreen, cursor::Hide).context("cannot set up the terminal")?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(out)).context("cannot set up the terminal")?;
    terminal.clear().context("cannot set up the terminal")?;
    Ok(terminal)
}

/// Leave the alternate screen and raw mode, once, whoever asks first.
fn restore_terminal() {
    if TERMINAL_ACTIVE.swap(false, Ordering::SeqCst) {
        // Raw mode first: it has more effects than the alternate screen.
        let _ = disable_raw_mode();
        let mut out = std::io::stdout();
        let _ = execute!(out, LeaveAlternateScreen, cursor::Show);
        let _ = out.flush();
    }
}

fn install_panic_hook() {
    static INSTALLED: AtomicBool = AtomicBool::new(false);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return;
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Otherwise the message would land on the alternate screen and vanish.
        restore_terminal();
        previous(info);
    }));
}

/// One line on the normal screen once the display is gone, as `prof record` prints.
fn summary(top: &Top) {
    let Some(stats) = &top.final_stats else {
        return;
    };
    let p = &top.profile;
    let mut line = stats.summary_line(stats.samples, p.threads().len(), p.meta().requested_rate);
    if let Some(log) = &top.status.log {
        line.push_str(&format!("; the command's output is in {}", log.display()));
    }
    eprintln!("{line}");
    for note in &stats.notices {
        eprintln!("prof: {note}");
    }
}
