//! The state of the `prof top` screen and what each key does to it.
//!
//! Pure: no terminal, no profile. The event loop feeds keys to [`App::handle_key`] and
//! acts on the returned [`Action`]; after computing a view it tells the app which rows,
//! threads and neighbors exist ([`App::sync_rows`], [`App::sync_threads`],
//! [`App::sync_detail`]) so that moving, cycling and opening stay within them.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// The column the function table is sorted by (descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortColumn {
    /// Share of samples where the function was running (innermost).
    #[default]
    Own,
    /// Share of samples where the function was on the stack.
    Total,
    /// Seconds the function was running.
    OwnTime,
    /// Seconds the function was on the stack.
    TotalTime,
}

impl SortColumn {
    /// Every column, in the table's order (keys `1`–`4`).
    pub const ALL: [SortColumn; 4] = [
        SortColumn::Own,
        SortColumn::Total,
        SortColumn::OwnTime,
        SortColumn::TotalTime,
    ];

    /// The column's title in the table header.
    pub fn title(self) -> &'static str {
        match self {
            SortColumn::Own => "%Own",
            SortColumn::Total => "%Total",
            SortColumn::OwnTime => "OwnTime",
            SortColumn::TotalTime => "TotalTime",
        }
    }

    /// Position in [`SortColumn::ALL`].
    pub fn index(self) -> usize {
        SortColumn::ALL.iter().position(|&c| c == self).unwrap_or(0)
    }

    /// The next column (`s`), wrapping around.
    pub fn next(self) -> SortColumn {
        SortColumn::ALL[(self.index() + 1) % SortColumn::ALL.len()]
    }

    /// True when the column sorts by own samples (else by total samples).
    pub fn by_own(self) -> bool {
        matches!(self, SortColumn::Own | SortColumn::OwnTime)
    }
}

/// What the event loop must do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing changed.
    None,
    /// The view changed: recompute and draw it.
    Redraw,
    /// Freeze the display (sampling goes on).
    Pause,
    /// Unfreeze the display.
    Resume,
    /// Throw away everything collected so far.
    Reset,
    /// Leave `prof top`.
    Quit,
}

/// The screen's state: sort, filter, thread selection, pause, scrolling, overlays.
#[derive(Debug, Clone, Default)]
pub struct App {
    /// Column the table is sorted by.
    pub sort: SortColumn,
    /// The display is frozen (sampling goes on).
    pub paused: bool,
    /// One row per line of a function instead of one per function.
    pub by_line: bool,
    /// With native sampling (`top --native`): whether native frames are shown; None when
    /// there are none to show.
    pub native: Option<bool>,
    /// The one thread shown (by name), or None for all threads.
    pub thread: Option<String>,
    /// Rows must contain this text (case-insensitively) in their function or file name.
    pub filter: String,
    /// Keys are being typed into the filter.
    pub editing_filter: bool,
    /// The key help is shown over the table.
    pub help: bool,
    /// The threads view (each thread's state shares) replaces the table.
    pub states: bool,
    /// Entries whose callers and callees are shown, the current one last (Esc goes back).
    pub detail: Vec<usize>,
    /// Index of the highlighted row of the table.
    pub selected: usize,
    /// First row of the table on screen.
    pub offset: usize,
    /// Index of the highlighted line of the callers/callees view (callers first).
    pub detail_selected: usize,
    /// Rows that fit on the screen, as last drawn (for PgUp/PgDn).
    pub page: usize,
    /// Thread names that `t` cycles through, as last computed.
    threads: Vec<String>,
    /// Entry ids of the table's rows, as last computed.
    rows: Vec<usize>,
    /// Entry id of the highlighted row, so the highlight follows it as rows reorder.
    selected_id: Option<usize>,
    /// Entry ids of the callers then callees, as last computed.
    detail_rows: Vec<usize>,
}

impl App {
    /// The initial state: by function, sorted by %Own, all threads.
    pub fn new() -> App {
        App {
            page: 10,
            ..App::default()
        }
    }

    /// Are native frames part of the table?
    pub fn shows_native(&self) -> bool {
        self.native != Some(false)
    }

    /// The entry whose callers and callees are shown, if any.
    pub fn detail_id(&self) -> Option<usize> {
        self.detail.last().copied()
    }

    /// Apply one key; returns what the event loop must do.
    pub fn handle_key(&mut self, key: KeyEvent) -> Action {
        // Terminals that report releases would otherwise act twice.
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C')) {
            return Action::Quit;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::Redraw
            };
        }
        if self.editing_filter {
            return self.filter_key(key);
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') => Action::Quit,
            KeyCode::Char('?') | KeyCode::Char('h') | KeyCode::F(1) => {
                self.help = true;
                Action::Redraw
            }
            KeyCode::Char(c @ '1'..='4') => {
                self.sort = SortColumn::ALL[(c as u8 - b'1') as usize];
                Action::Redraw
            }
            KeyCode::Char('s') => {
                self.sort = self.sort.next();
                Action::Redraw
            }
            KeyCode::Char(' ') | KeyCode::Char('p') => {
                self.paused = !self.paused;
                if self.paused {
                    Action::Pause
                } else {
                    Action::Resume
                }
            }
            KeyCode::Char('r') => {
                // Ids are meaningless in a new profile.
                self.detail.clear();
                self.go_top();
                Action::Reset
            }
            KeyCode::Char('l') | KeyCode::Char('L') => {
                // Ids are function ids or frame ids depending on the mode.
                self.by_line = !self.by_line;
                self.detail.clear();
                self.go_top();
                Action::Redraw
            }
            KeyCode::Char('n') | KeyCode::Char('N') if self.native.is_some() => {
                // Hiding frames changes which entries exist.
                self.native = self.native.map(|shown| !shown);
                self.detail.clear();
                self.go_top();
                Action::Redraw
            }
            KeyCode::Char('t') => {
                self.cycle_thread(true);
                Action::Redraw
            }
            KeyCode::Char('T') => {
                self.cycle_thread(false);
                Action::Redraw
            }
            KeyCode::Char('w') => {
                self.states = !self.states;
                Action::Redraw
            }
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.detail.clear();
                Action::Redraw
            }
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left if !self.detail.is_empty() => {
                self.detail.pop();
                self.detail_selected = 0;
                Action::Redraw
            }
            KeyCode::Esc => {
                if self.filter.is_empty() {
                    return Action::None;
                }
                self.filter.clear();
                self.go_top();
                Action::Redraw
            }
            KeyCode::Enter | KeyCode::Right => self.open(),
            _ => self.move_key(key),
        }
    }

    /// Keys while typing a filter: text edits it live; Enter keeps it, Esc clears it.
    fn filter_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Esc => {
                self.editing_filter = false;
                self.filter.clear();
                self.go_top();
            }
            KeyCode::Enter => self.editing_filter = false,
            KeyCode::Backspace => {
                if self.filter.pop().is_none() {
                    // Backspace on an empty filter leaves it, as in less and vim.
                    self.editing_filter = false;
                }
                self.go_top();
            }
            KeyCode::Char(c) if !key.modifiers.contains(KeyModifiers::CONTROL) => {
                self.filter.push(c);
                self.go_top();
            }
            _ => return self.move_key(key),
        }
        Action::Redraw
    }

    /// Arrows, PgUp/PgDn, Home/End (and j/k/g/G) in the table or the callers/callees list.
    fn move_key(&mut self, key: KeyEvent) -> Action {
        let page = self.page.max(1) as isize;
        let delta: isize = match key.code {
            KeyCode::Up | KeyCode::Char('k') => -1,
            KeyCode::Down | KeyCode::Char('j') => 1,
            KeyCode::PageUp => -page,
            KeyCode::PageDown => page,
            KeyCode::Home | KeyCode::Char('g') => isize::MIN / 2,
            KeyCode::End | KeyCode::Char('G') => isize::MAX / 2,
            _ => return Action::None,
        };
        if self.detail.is_empty() {
            self.selected = step(self.selected, delta, self.rows.len());
            self.selected_id = self.rows.get(self.selected).copied();
        } else {
            self.detail_selected = step(self.detail_selected, delta, self.detail_rows.len());
        }
        Action::Redraw
    }

    /// Enter: open the highlighted row's callers and callees (or, there, the
    /// highlighted caller's or callee's).
    fn open(&mut self) -> Action {
        let id = if self.detail.is_empty() {
            self.rows.get(self.selected).copied()
        } else {
            self.detail_rows.get(self.detail_selected).copied()
        };
        match id {
            Some(id) => {
                self.detail.push(id);
                self.detail_selected = 0;
                Action::Redraw
            }
            None => Action::None,
        }
    }

    /// `t`: all threads → each thread by name → all threads (`T` goes backwards).
    fn cycle_thread(&mut self, forward: bool) {
        let n = self.threads.len();
        let pos = self
            .thread
            .as_ref()
            .and_then(|t| self.threads.iter().position(|x| x == t));
        // Positions 0..n are threads, n is "all".
        let cur = pos.unwrap_or(n);
        let next = if forward {
            (cur + 1) % (n + 1)
        } else {
            (cur + n) % (n + 1)
        };
        self.thread = self.threads.get(next).cloned();
        self.detail.clear();
        self.go_top();
    }

    fn go_top(&mut self) {
        self.selected = 0;
        self.offset = 0;
        self.selected_id = None;
        self.detail_selected = 0;
    }

    /// The thread names `t` cycles through, in the order they were first seen.
    pub fn sync_threads(&mut self, names: Vec<String>) {
        self.threads = names;
    }

    /// The entry ids of the table's rows, in display order: the highlight stays on the
    /// same entry when rows reorder, and within the table when rows disappear.
    pub fn sync_rows(&mut self, ids: Vec<usize>) {
        self.rows = ids;
        if let Some(id) = self.selected_id
            && let Some(pos) = self.rows.iter().position(|&r| r == id)
        {
            self.selected = pos;
        }
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        self.selected_id = self.rows.get(self.selected).copied();
    }

    /// The entry ids of the callers then the callees of the open entry.
    pub fn sync_detail(&mut self, ids: Vec<usize>) {
        self.detail_rows = ids;
        self.detail_selected = self
            .detail_selected
            .min(self.detail_rows.len().saturating_sub(1));
    }

    /// Record how many rows fit and scroll so that the highlighted row is visible.
    pub fn fit(&mut self, page: usize) {
        self.page = page.max(1);
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if self.selected >= self.offset + self.page {
            self.offset = self.selected + 1 - self.page;
        }
        // No empty space below the last row when it could be filled.
        let max_offset = self.rows.len().saturating_sub(self.page);
        self.offset = self.offset.min(max_offset);
    }
}

/// Move `from` by `delta` within `0..len`.
fn step(from: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (from as isize)
        .saturating_add(delta)
        .clamp(0, len as isize - 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ch(c: char) -> KeyEvent {
        key(KeyCode::Char(c))
    }

    fn app_with_rows(n: usize) -> App {
        let mut app = App::new();
        app.sync_rows((100..100 + n).collect());
        app.fit(5);
        app
    }

    #[test]
    fn quit_keys() {
        let mut app = App::new();
        assert_eq!(app.handle_key(ch('q')), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(app.handle_key(ctrl_c), Action::Quit);
        // Ctrl-C quits even while typing a filter; q there is text.
        app.handle_key(ch('/'));
        assert_eq!(app.handle_key(ch('q')), Action::Redraw);
        assert_eq!(app.filter, "q");
        assert_eq!(app.handle_key(ctrl_c), Action::Quit);
    }

    #[test]
    fn releases_are_ignored() {
        let mut app = App::new();
        let mut release = ch('s');
        release.kind = KeyEventKind::Release;
        assert_eq!(app.handle_key(release), Action::None);
        assert_eq!(app.sort, SortColumn::Own);
    }

    #[test]
    fn sorting() {
        let mut app = App::new();
        assert_eq!(app.sort, SortColumn::Own);
        app.handle_key(ch('2'));
        assert_eq!(app.sort, SortColumn::Total);
        app.handle_key(ch('4'));
        assert_eq!(app.sort, SortColumn::TotalTime);
        app.handle_key(ch('s'));
        assert_eq!(app.sort, SortColumn::Own, "s wraps around");
        app.handle_key(ch('s'));
        app.handle_key(ch('s'));
        assert_eq!(app.sort, SortColumn::OwnTime);
        assert!(SortColumn::OwnTime.by_own() && !SortColumn::Total.by_own());
    }

    #[test]
    fn n_toggles_native_frames_only_when_there_are_some() {
        let mut app = app_with_rows(10);
        assert_eq!(app.handle_key(ch('n')), Action::None);
        assert!(app.shows_native() && app.native.is_none());
        app.native = Some(true);
        app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.handle_key(ch('n')), Action::Redraw);
        assert!(!app.shows_native());
        // Entry ids change with the frames shown: the detail view closes.
        assert_eq!(app.detail_id(), None);
        app.handle_key(ch('n'));
        assert!(app.shows_native());
    }

    #[test]
    fn pause_and_reset() {
        let mut app = app_with_rows(10);
        assert_eq!(app.handle_key(ch(' ')), Action::Pause);
        assert!(app.paused);
        assert_eq!(app.handle_key(ch(' ')), Action::Resume);
        assert!(!app.paused);
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.detail_id(), Some(101));
        assert_eq!(app.handle_key(ch('r')), Action::Reset);
        assert_eq!((app.selected, app.detail_id()), (0, None));
    }

    #[test]
    fn line_toggle_closes_detail() {
        let mut app = app_with_rows(3);
        app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.detail_id(), Some(100));
        app.handle_key(ch('l'));
        assert!(app.by_line);
        assert_eq!(app.detail_id(), None);
        app.handle_key(ch('l'));
        assert!(!app.by_line);
    }

    #[test]
    fn thread_cycling() {
        let mut app = App::new();
        app.sync_threads(vec!["MainThread".into(), "worker".into()]);
        app.handle_key(ch('t'));
        assert_eq!(app.thread.as_deref(), Some("MainThread"));
        app.handle_key(ch('t'));
        assert_eq!(app.thread.as_deref(), Some("worker"));
        app.handle_key(ch('t'));
        assert_eq!(app.thread, None, "back to all threads");
        app.handle_key(ch('T'));
        assert_eq!(app.thread.as_deref(), Some("worker"));
        // A thread that is gone from the list: the next one is the first.
        app.thread = Some("gone".into());
        app.handle_key(ch('t'));
        assert_eq!(app.thread.as_deref(), Some("MainThread"));
        // No threads at all: t stays on all threads.
        let mut empty = App::new();
        empty.handle_key(ch('t'));
        assert_eq!(empty.thread, None);
    }

    #[test]
    fn filter_editing() {
        let mut app = app_with_rows(10);
        app.handle_key(key(KeyCode::Down));
        app.handle_key(ch('/'));
        assert!(app.editing_filter);
        for c in "fib".chars() {
            app.handle_key(ch(c));
        }
        assert_eq!(app.filter, "fib");
        assert_eq!(app.selected, 0, "a new filter starts at the top");
        app.handle_key(key(KeyCode::Backspace));
        assert_eq!(app.filter, "fi");
        app.handle_key(key(KeyCode::Enter));
        assert!(!app.editing_filter);
        assert_eq!(app.filter, "fi", "Enter keeps the filter");
        // Keys are commands again.
        assert_eq!(app.handle_key(ch('s')), Action::Redraw);
        assert_eq!(app.sort, SortColumn::Total);
        // Esc clears it.
        app.handle_key(key(KeyCode::Esc));
        assert_eq!(app.filter, "");
        assert_eq!(app.handle_key(key(KeyCode::Esc)), Action::None);
        // Esc while typing clears and leaves typing.
        app.handle_key(ch('/'));
        app.handle_key(ch('x'));
        app.handle_key(key(KeyCode::Esc));
        assert!(!app.editing_filter && app.filter.is_empty());
        // Backspace on an empty filter leaves typing.
        app.handle_key(ch('/'));
        app.handle_key(key(KeyCode::Backspace));
        assert!(!app.editing_filter);
    }

    #[test]
    fn w_toggles_the_threads_view() {
        let mut app = App::new();
        assert_eq!(app.handle_key(ch('w')), Action::Redraw);
        assert!(app.states);
        app.handle_key(ch('w'));
        assert!(!app.states);
    }

    #[test]
    fn help_overlay() {
        let mut app = App::new();
        app.handle_key(ch('?'));
        assert!(app.help);
        // Any key closes it without acting...
        assert_eq!(app.handle_key(ch('s')), Action::Redraw);
        assert!(!app.help);
        assert_eq!(app.sort, SortColumn::Own);
        // ...but q still quits.
        app.handle_key(ch('?'));
        assert_eq!(app.handle_key(ch('q')), Action::Quit);
    }

    #[test]
    fn moving_and_scrolling() {
        let mut app = app_with_rows(20);
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.selected, 0, "stops at the top");
        app.handle_key(key(KeyCode::PageDown));
        assert_eq!(app.selected, 5);
        app.fit(5);
        assert_eq!(app.offset, 1, "scrolled so the row is visible");
        app.handle_key(key(KeyCode::End));
        assert_eq!(app.selected, 19);
        app.fit(5);
        assert_eq!(app.offset, 15);
        app.handle_key(key(KeyCode::PageUp));
        assert_eq!(app.selected, 14);
        app.fit(5);
        assert_eq!(app.offset, 14);
        app.handle_key(key(KeyCode::Home));
        app.fit(5);
        assert_eq!((app.selected, app.offset), (0, 0));
        app.handle_key(ch('j'));
        assert_eq!(app.selected, 1);
        // Unrelated keys do nothing.
        assert_eq!(app.handle_key(ch('z')), Action::None);
    }

    #[test]
    fn highlight_follows_its_row() {
        let mut app = app_with_rows(5);
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.selected, 2);
        // Row 102 moves to the top after a refresh: the highlight follows it.
        app.sync_rows(vec![102, 100, 101]);
        assert_eq!(app.selected, 0);
        // It disappears: the highlight stays in range.
        app.handle_key(key(KeyCode::End));
        app.sync_rows(vec![7]);
        assert_eq!(app.selected, 0);
        app.sync_rows(Vec::new());
        assert_eq!(app.selected, 0);
        assert_eq!(app.handle_key(key(KeyCode::Enter)), Action::None);
    }

    #[test]
    fn callers_and_callees_navigation() {
        let mut app = app_with_rows(5);
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.handle_key(key(KeyCode::Enter)), Action::Redraw);
        assert_eq!(app.detail_id(), Some(101));
        // Callers 7, 8 then callees 9.
        app.sync_detail(vec![7, 8, 9]);
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.detail_selected, 2);
        assert_eq!(app.selected, 1, "the table's highlight is kept");
        app.handle_key(key(KeyCode::Enter));
        assert_eq!(app.detail, [101, 9]);
        assert_eq!(app.detail_selected, 0);
        app.handle_key(key(KeyCode::Esc));
        assert_eq!(app.detail, [101]);
        app.handle_key(key(KeyCode::Backspace));
        assert_eq!(app.detail_id(), None);
        assert_eq!(app.selected, 1);
    }
}
