//! Drawing the `prof top` screen: a header with the run's figures, the function table
//! (or the callers and callees of one entry), a footer with the keys, and the help.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table};

use crate::profile::{Neighbor, Profile};

use super::app::{App, SortColumn};
use super::view::{Status, TargetState, View, label, pct};

/// Keys and what they do: the help overlay and the README's table.
pub const KEYS: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("?", "show or hide this help"),
    ("1 2 3 4", "sort by %Own, %Total, OwnTime, TotalTime"),
    ("s", "sort by the next column"),
    ("space", "pause the display (sampling continues)"),
    ("r", "reset: forget everything sampled so far"),
    ("l", "one row per line / per function"),
    ("n", "show / hide native frames (with --native)"),
    ("t / T", "next / previous thread: all, then each by name"),
    (
        "w",
        "threads view: what each thread runs or waits for (prof diagnose's states)",
    ),
    ("/", "filter by function or file name (Esc clears)"),
    ("Enter", "callers and callees of the highlighted row"),
    ("Esc", "back from callers/callees, or clear the filter"),
    ("↑ ↓ PgUp PgDn Home End", "move (also j k g G)"),
];

const HEADER_BG: Color = Color::DarkGray;

/// Draw the whole screen for `app` over `profile`; records in `app` the rows, threads
/// and page size it drew, so that keys act on what is on screen.
pub fn draw(frame: &mut Frame, app: &mut App, profile: &Profile, status: &Status) {
    let view = View::compute(profile, app);
    view.sync(profile, app);
    let lines = header_lines(frame.area().width, app, profile, status, &view);
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(lines.len() as u16),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(lines), header);
    let interval = status.interval(profile.meta().requested_rate);
    match (&view.detail, &status.states) {
        (_, Some(report)) if app.states => draw_states(frame, body, report),
        (Some((name, n)), _) => {
            draw_detail(frame, body, app, name, n, view.totals.samples, interval)
        }
        (None, _) => draw_table(frame, body, app, &view, status, interval),
    }
    draw_footer(frame, footer, app);
    if app.help {
        draw_help(frame, frame.area());
    }
}

/// The header's lines for a screen `width` wide: the title, then the run's figures and
/// the view's settings, packed so that a narrow screen wraps between fields, not in one.
fn header_lines(
    width: u16,
    app: &App,
    profile: &Profile,
    status: &Status,
    view: &View,
) -> Vec<Line<'static>> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let dim = Style::new().fg(Color::Gray);
    let mut first = vec![
        Span::styled("prof top ", bold.fg(Color::Cyan)),
        Span::styled(profile.meta().title.clone(), bold),
    ];
    if let Some(pid) = status.pid
        && !profile.meta().title.contains(&format!("pid {pid}"))
    {
        first.push(Span::raw(format!("  pid {pid}")));
    }
    if let Some(v) = &status.python {
        first.push(Span::raw(format!("  Python {v}")));
    }
    first.push(Span::raw("  "));
    let (badge, color) = match status.target {
        TargetState::Starting => ("waiting for Python".to_owned(), Color::Yellow),
        TargetState::Running if app.paused => (
            "PAUSED (sampling continues; space resumes)".to_owned(),
            Color::Yellow,
        ),
        TargetState::Running => ("sampling".to_owned(), Color::Green),
        TargetState::Exited { code: Some(c) } => {
            (format!("target exited (code {c}); q quits"), Color::Red)
        }
        TargetState::Exited { code: None } => ("target exited; q quits".to_owned(), Color::Red),
        TargetState::NotPython => ("not a Python process; q quits".to_owned(), Color::Red),
    };
    first.push(Span::styled(
        format!(" {badge} "),
        Style::new().fg(Color::Black).bg(color),
    ));
    if app.paused && status.target != TargetState::Running {
        first.push(Span::styled(
            " PAUSED ",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }

    let t = &view.totals;
    let requested = profile.meta().requested_rate;
    let field = |name: &str, value: String| {
        vec![
            Span::styled(format!("{name} "), dim),
            Span::styled(value, bold),
        ]
    };
    let mut second: Vec<Vec<Span>> = Vec::new();
    second.push(field("Elapsed", fmt_duration(status.elapsed)));
    second.push(field("Samples", t.samples.to_string()));
    second.push(field(
        "Rate",
        format!(
            "{:.1} of {} Hz",
            status.achieved_rate(),
            fmt_rate(requested)
        ),
    ));
    second.push(field("Active", format!("{:.1}%", t.active_pct())));
    second.push(field("GIL", format!("{:.1}%", t.gil_pct())));
    second.push(field("Threads", t.threads.to_string()));
    second.push(field("Errors", status.errors.to_string()));
    second.push(field("Dropped", status.dropped_ticks.to_string()));
    if status.lost > 0 {
        second.push(field("Lost", status.lost.to_string()));
    }

    let mut third: Vec<Vec<Span>> = Vec::new();
    let showing = match &app.thread {
        None => format!("all threads ({})", view.all_threads),
        Some(name) => format!("thread {name}"),
    };
    third.push(field("Showing", showing));
    third.push(field(
        "By",
        if app.by_line { "line" } else { "function" }.to_owned(),
    ));
    if let Some(shown) = app.native {
        third.push(field(
            "Native",
            if shown { "shown" } else { "hidden" }.to_owned(),
        ));
    }
    if !app.filter.is_empty() || app.editing_filter {
        third.push(field(
            "Filter",
            format!(
                "\"{}\" ({} of {})",
                app.filter,
                view.rows.len(),
                view.unfiltered
            ),
        ));
    }
    if let Some(log) = &status.log {
        third.push(field("Command output", log.display().to_string()));
    }
    let mut lines = vec![Line::from(first)];
    lines.extend(pack(second, width));
    lines.extend(pack(third, width));
    if let Some(report) = &status.states {
        lines.push(Line::from(field("States", report.process.states.line())));
        lines.push(Line::from(vec![
            Span::styled(format!("Verdict ({}) ", report.verdict.kind), dim),
            Span::styled(report.verdict.text.clone(), bold),
        ]));
    }
    lines
}

/// The threads view: each thread's share of each state, and its hottest function in its
/// main state.
fn draw_states(frame: &mut Frame, area: Rect, report: &crate::diagnose::Report) {
    use crate::diagnose::State;
    let mut header = vec![
        Cell::from("Thread"),
        Cell::from("TID"),
        Cell::from("Samples"),
    ];
    header.extend(State::ALL.iter().map(|s| Cell::from(s.name())));
    header.push(Cell::from("Hottest in its main state"));
    let rows = report.threads.iter().map(|t| {
        let mut cells = vec![
            Cell::from(t.name.clone()),
            Cell::from(t.tid.map_or("?".to_string(), |x| x.to_string())),
            Cell::from(t.samples.to_string()),
        ];
        cells.extend(State::ALL.iter().map(|s| {
            let v = t.states.get(*s);
            Cell::from(if v > 0.0 {
                format!("{:.0}%", v * 100.0)
            } else {
                "-".to_string()
            })
        }));
        let main = State::ALL
            .iter()
            .max_by(|a, b| t.states.get(**a).total_cmp(&t.states.get(**b)));
        let hot = main
            .and_then(|s| t.top.get(s.name()).map(|f| format!("{}: {f}", s.name())))
            .unwrap_or_default();
        cells.push(Cell::from(hot));
        Row::new(cells)
    });
    let mut widths = vec![
        Constraint::Length(18),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    widths.extend(State::ALL.iter().map(|_| Constraint::Length(7)));
    widths.push(Constraint::Fill(1));
    let bold = Style::new().add_modifier(Modifier::BOLD);
    frame.render_widget(
        Table::new(rows, widths).header(Row::new(header).style(bold)),
        area,
    );
}

/// Fields into lines at most `width` wide, three spaces apart; a field wider than the
/// screen gets a line of its own.
fn pack(fields: Vec<Vec<Span<'static>>>, width: u16) -> Vec<Line<'static>> {
    const GAP: usize = 3;
    let mut lines: Vec<Line> = Vec::new();
    let mut cur: Vec<Span> = Vec::new();
    let mut used = 0;
    for f in fields {
        let w: usize = f.iter().map(|s| s.width()).sum();
        if !cur.is_empty() && used + GAP + w > width as usize {
            lines.push(Line::from(std::mem::take(&mut cur)));
            used = 0;
        }
        if !cur.is_empty() {
            cur.push(Span::raw(" ".repeat(GAP)));
            used += GAP;
        }
        cur.extend(f);
        used += w;
    }
    if !cur.is_empty() {
        lines.push(Line::from(cur));
    }
    lines
}

fn draw_table(
    frame: &mut Frame,
    area: Rect,
    app: &mut App,
    view: &View,
    status: &Status,
    interval: f64,
) {
    // The table header takes one line.
    app.fit(area.height.saturating_sub(1) as usize);
    let function_title = if app.by_line {
        "Function (file:line)"
    } else {
        "Function (file)"
    };
    let header = Row::new(
        SortColumn::ALL
            .iter()
            .map(|&c| {
                // Right-aligned over the numbers, the sort column marked.
                let w = if c.index() < 2 { 7 } else { 9 };
                if c == app.sort {
                    Cell::from(format!("{:>w$}", format!("{}▼", c.title()))).style(
                        Style::new()
                            .fg(Color::Black)
                            .bg(Color::Cyan)
                            .add_modifier(Modifier::BOLD),
                    )
                } else {
                    Cell::from(format!("{:>w$}", c.title()))
                }
            })
            .chain(std::iter::once(Cell::from(function_title))),
    )
    .style(Style::new().bg(HEADER_BG).add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    let name_width = area.width.saturating_sub(7 + 7 + 9 + 10 + 4) as usize;
    let total = view.totals.samples;
    let sorted = app.sort.index();
    let rows: Vec<Row> = view
        .rows
        .iter()
        .enumerate()
        .skip(app.offset)
        .take(app.page)
        .map(|(i, r)| {
            let cells = [
                format!("{:6.2}%", pct(r.own, total)),
                format!("{:6.2}%", pct(r.total, total)),
                fmt_secs(r.own as f64 * interval),
                fmt_secs(r.total as f64 * interval),
            ];
            let cells = cells.into_iter().enumerate().map(|(c, s)| {
                let cell = Cell::from(format!("{s:>w$}", w = if c < 2 { 7 } else { 9 }));
                if c == sorted {
                    cell.style(Style::new().add_modifier(Modifier::BOLD))
                } else {
                    cell
                }
            });
            let name = fit_label(&r.name, &r.filename, r.line, name_width);
            let row = Row::new(cells.chain(std::iter::once(Cell::from(name))));
            if i == app.selected {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let empty = view.rows.is_empty();
    frame.render_widget(Table::new(rows, widths).header(header), area);
    if empty {
        let msg = empty_message(app, view, status);
        let [_, msg_area] =
            Layout::vertical([Constraint::Length(2), Constraint::Fill(1)]).areas(area);
        frame.render_widget(
            Paragraph::new(msg).style(Style::new().fg(Color::Yellow)),
            msg_area,
        );
    }
}

/// Why the table is empty, and what to do about it.
fn empty_message(app: &App, view: &View, status: &Status) -> String {
    if view.unfiltered > 0 {
        return format!(
            "  Nothing matches \"{}\" in a function or file name (Esc clears the filter).",
            app.filter
        );
    }
    match status.target {
        TargetState::Starting => "  Waiting for the command to start Python…".to_owned(),
        TargetState::NotPython => "  The command is not a Python process, so there is nothing \
                                   to sample (use -s to follow the Python processes it starts)."
            .to_owned(),
        _ if app.thread.is_some() && view.all_threads > 0 => {
            "  No samples from this thread (t shows the next one).".to_owned()
        }
        _ => "  No samples yet: idle threads are left out (start prof top with --idle to \
              include them)."
            .to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
fn draw_detail(
    frame: &mut Frame,
    area: Rect,
    app: &mut App,
    name: &str,
    n: &crate::profile::Neighbors,
    total: u64,
    interval: f64,
) {
    // Callers get the room they need, up to half; callees the rest.
    let callers_height = (n.callers.len().max(1) as u16 + 3).min(area.height.saturating_sub(1) / 2);
    let [title, callers_area, callees_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(callers_height),
        Constraint::Fill(1),
    ])
    .areas(area);
    let bold = Style::new().add_modifier(Modifier::BOLD);
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::raw("Callers and callees of "),
            Span::styled(name.to_owned(), bold.fg(Color::Cyan)),
            Span::raw(format!(
                "   own {:.2}% ({})   total {:.2}% ({})   Esc back",
                pct(n.own, total),
                fmt_secs(n.own as f64 * interval),
                pct(n.total, total),
                fmt_secs(n.total as f64 * interval),
            )),
        ])),
        title,
    );
    let callers_title = if n.root > 0 {
        format!(
            "Called by ({:.2}% with no caller: outermost frame)",
            pct(n.root, total)
        )
    } else {
        "Called by".to_owned()
    };
    let callees_title = format!("Calls ({:.2}% running in itself)", pct(n.own, total));
    let selected = app.detail_selected;
    let (sel_callers, sel_callees) = if selected < n.callers.len() {
        (Some(selected), None)
    } else {
        (None, Some(selected - n.callers.len()))
    };
    neighbor_table(
        frame,
        callers_area,
        &callers_title,
        &n.callers,
        sel_callers,
        total,
        interval,
    );
    neighbor_table(
        frame,
        callees_area,
        &callees_title,
        &n.callees,
        sel_callees,
        total,
        interval,
    );
    app.page = callees_area.height.saturating_sub(3).max(1) as usize;
}

fn neighbor_table(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    list: &[Neighbor],
    selected: Option<usize>,
    total: u64,
    interval: f64,
) {
    let block = Block::bordered().title(Span::styled(
        format!(" {title} "),
        Style::new().add_modifier(Modifier::BOLD),
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let visible = inner.height.saturating_sub(1) as usize;
    // Keep the highlighted line on screen.
    let offset = match selected {
        Some(s) if s >= visible => s + 1 - visible,
        _ => 0,
    };
    let name_width = inner.width.saturating_sub(8 + 10 + 2) as usize;
    let rows: Vec<Row> = list
        .iter()
        .enumerate()
        .skip(offset)
        .take(visible)
        .map(|(i, x)| {
            let row = Row::new([
                Cell::from(format!("{:6.2}%", pct(x.samples, total))),
                Cell::from(format!("{:>9}", fmt_secs(x.samples as f64 * interval))),
                Cell::from(fit_label(&x.name, &x.filename, x.line, name_width)),
            ]);
            if Some(i) == selected {
                row.style(Style::new().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let header = Row::new(["%Total", " TotalTime", "Function"])
        .style(Style::new().bg(HEADER_BG).add_modifier(Modifier::BOLD));
    let widths = [
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Fill(1),
    ];
    if list.is_empty() {
        frame.render_widget(Paragraph::new("  (none)"), inner);
    } else {
        frame.render_widget(Table::new(rows, widths).header(header), inner);
    }
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let key = Style::new().fg(Color::Black).bg(Color::Cyan);
    let line = if app.editing_filter {
        Line::from(vec![
            Span::styled(" Filter: ", key),
            Span::raw(format!(" {}▏", app.filter)),
            Span::styled(
                "   Enter keeps it · Esc clears it",
                Style::new().fg(Color::Gray),
            ),
        ])
    } else {
        let hints: &[(&str, &str)] = if app.detail.is_empty() {
            &[
                ("q", "quit"),
                ("?", "help"),
                ("1-4 s", "sort"),
                ("space", "pause"),
                ("r", "reset"),
                ("l", "lines"),
                ("t", "thread"),
                ("w", "states"),
                ("/", "filter"),
                ("Enter", "callers/callees"),
            ]
        } else {
            &[
                ("q", "quit"),
                ("?", "help"),
                ("↑↓", "move"),
                ("Enter", "open"),
                ("Esc", "back"),
            ]
        };
        let mut spans = Vec::new();
        for (k, what) in hints {
            spans.push(Span::styled(format!(" {k} "), key));
            spans.push(Span::raw(format!(" {what}  ")));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_help(frame: &mut Frame, area: Rect) {
    let key_width = KEYS
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(
                    format!(" {k:<key_width$}  "),
                    Style::new().add_modifier(Modifier::BOLD).fg(Color::Cyan),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    let width = lines.iter().map(|l| l.width()).max().unwrap_or(0) as u16 + 3;
    let height = lines.len() as u16 + 2;
    let rect = Rect {
        x: area.x + area.width.saturating_sub(width) / 2,
        y: area.y + area.height.saturating_sub(height) / 2,
        width: width.min(area.width),
        height: height.min(area.height),
    };
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" prof top keys (any key closes) ")
                .style(Style::new().bg(Color::Black).fg(Color::White)),
        ),
        rect,
    );
}

/// `name (file:line)` in at most `width` characters: a long file name loses its
/// beginning first, so that the function, the file's last components and the line stay.
fn fit_label(name: &str, filename: &str, line: Option<i32>, width: usize) -> String {
    let full = label(name, filename, line);
    if full.chars().count() <= width {
        return full;
    }
    let tail = match line {
        Some(l) => format!(":{l})"),
        None => ")".to_owned(),
    };
    let head = format!("{name} (…");
    let room = width.saturating_sub(head.chars().count() + tail.chars().count());
    if room >= 8 {
        let file: Vec<char> = filename.chars().collect();
        let kept: String = file[file.len().saturating_sub(room)..].iter().collect();
        return format!("{head}{kept}{tail}");
    }
    let mut s: String = full.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Seconds for the time columns (also `prof report`'s).
pub fn fmt_secs(s: f64) -> String {
    if s < 100.0 {
        format!("{s:.2}s")
    } else if s < 10_000.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.0}s")
    }
}

/// Elapsed time: `12.3s`, `4m05s`, `1h02m`.
fn fmt_duration(s: f64) -> String {
    let whole = s as u64;
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, whole % 3600 / 60)
    }
}

/// A rate without a needless `.0`.
fn fmt_rate(r: f64) -> String {
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileOptions;
    use crate::profile::fixtures::two_threads;
    use crate::tui::app::Action;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn status() -> Status {
        Status {
            pid: Some(4242),
            python: Some("3.12.1".into()),
            log: None,
            elapsed: 0.06,
            ticks: 6,
            dropped_ticks: 2,
            errors: 3,
            lost: 0,
            target: TargetState::Running,
            states: None,
        }
    }

    /// The screen as text, one string per line.
    fn screen(app: &mut App, profile: &Profile, status: &Status) -> Vec<String> {
        screen_sized(app, profile, status, 120, 30)
    }

    fn screen_sized(
        app: &mut App,
        profile: &Profile,
        status: &Status,
        w: u16,
        h: u16,
    ) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app, profile, status)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    fn key(app: &mut App, c: KeyCode) -> Action {
        app.handle_key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    /// Function names of the table's rows, top to bottom.
    fn table_names(lines: &[String]) -> Vec<String> {
        let start = lines
            .iter()
            .position(|l| l.contains("Function ("))
            .expect("table header");
        lines[start + 1..]
            .iter()
            .filter(|l| l.contains('%'))
            .map(|l| l.split_whitespace().nth(4).unwrap_or_default().to_owned())
            .collect()
    }

    fn find<'a>(lines: &'a [String], text: &str) -> &'a str {
        lines
            .iter()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("{text:?} not on screen:\n{}", lines.join("\n")))
    }

    #[test]
    fn states_in_the_header_and_the_threads_view() {
        use crate::diagnose::{Diagnosis, State, ThreadState};
        use crate::sample::{Frame, FrameKind, Sample, ThreadStack};
        let mut d = Diagnosis::new();
        for (tid, state, n) in [
            (7, State::Sleep, 9),
            (7, State::Python, 1),
            (8, State::Sleep, 10),
        ] {
            for _ in 0..n {
                d.add(&Sample {
                    time: 0.0,
                    tick: 0,
                    pid: 4242,
                    stack: ThreadStack {
                        thread_id: tid as u64,
                        os_thread_id: Some(tid),
                        thread_name: Some(format!("napper-{tid}").into()),
                        active: false,
                        owns_gil: false,
                        gil_requested: false,
                        state: Some(ThreadState::plain(state)),
                        frames: vec![Frame::new("nap", "/a/n.py", "n.py", 3, FrameKind::Python)]
                            .into(),
                    },
                });
            }
        }
        let mut st = status();
        st.states = Some(d.report(None));
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        let s = screen(&mut app, &p, &st);
        assert!(find(&s, "States").contains("python 5% · sleep 95%"));
        assert!(find(&s, "Verdict (sleep)").contains("sleeping: 95% of thread time"));
        assert_eq!(key(&mut app, KeyCode::Char('w')), Action::Redraw);
        let s = screen(&mut app, &p, &st);
        let row = find(&s, "napper-7");
        assert!(row.contains("10%") && row.contains("90%"), "{row}");
        assert!(row.contains("sleep: nap (n.py:3)"), "{row}");
        assert!(find(&s, "TID").contains("python"));
    }

    #[test]
    fn header_figures() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        let s = screen(&mut app, &p, &status());
        let all = s.join("\n");
        assert!(all.contains("python app.py <&>"), "{all}");
        assert!(all.contains("pid 4242"));
        assert!(all.contains("Python 3.12.1"));
        assert!(all.contains("sampling"));
        let figures = find(&s, "Elapsed");
        for expected in [
            "Elapsed 0.1s",
            "Samples 10",
            "Rate 100.0 of 100 Hz",
            "Active 100.0%",
            // 6 of the 11 samples (the worker's empty one included) held the GIL.
            "GIL 54.5%",
            "Threads 2",
            "Errors 3",
            "Dropped 2",
        ] {
            assert!(figures.contains(expected), "{expected:?} in {figures:?}");
        }
        assert!(all.contains("all threads (2)"));
        assert!(all.contains("By function"));
    }

    #[test]
    fn rows_sorted_by_chosen_column() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        let s = screen(&mut app, &p, &status());
        // %Own: compute 4, wait 4, fib 1, work 1, main 0, run 0 (ties by total, then name).
        assert_eq!(
            table_names(&s),
            ["compute", "wait", "work", "fib", "main", "run"]
        );
        let compute = find(&s, "compute (main.py)");
        // 4 of 10 samples, 4 × 10 ms.
        assert!(compute.contains("40.00%"), "{compute}");
        assert!(compute.contains("0.04s"), "{compute}");
        assert!(find(&s, "%Own▼").contains(" %Total "));

        key(&mut app, KeyCode::Char('2'));
        let s = screen(&mut app, &p, &status());
        assert_eq!(
            table_names(&s),
            ["work", "main", "compute", "wait", "run", "fib"]
        );
        assert!(find(&s, "%Total▼").contains("%Own "));
        let main = find(&s, "main (main.py)");
        assert!(main.contains("60.00%") && main.contains("0.06s"), "{main}");

        key(&mut app, KeyCode::Char('4'));
        let s = screen(&mut app, &p, &status());
        assert!(s.join("\n").contains("TotalTime▼"));
        assert_eq!(table_names(&s)[0], "work");
    }

    #[test]
    fn by_line_rows() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        key(&mut app, KeyCode::Char('l'));
        let s = screen(&mut app, &p, &status());
        let all = s.join("\n");
        assert!(all.contains("Function (file:line)"));
        assert!(all.contains("compute (main.py:20)"));
        assert!(all.contains("compute (main.py:21)"));
        assert!(all.contains("By line"));
        assert!(find(&s, "compute (main.py:20)").contains("30.00%"));
    }

    #[test]
    fn filter_applied() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        key(&mut app, KeyCode::Char('/'));
        for c in "WA".chars() {
            key(&mut app, KeyCode::Char(c));
        }
        let s = screen(&mut app, &p, &status());
        assert_eq!(table_names(&s), ["wait"]);
        assert!(find(&s, "Filter").contains("\"WA\" (1 of 6)"));
        assert!(s.last().unwrap().contains("Filter:  WA"));
        key(&mut app, KeyCode::Char('x'));
        let s = screen(&mut app, &p, &status());
        assert!(table_names(&s).is_empty());
        assert!(s.join("\n").contains("Nothing matches \"WAx\""));
        key(&mut app, KeyCode::Esc);
        let s = screen(&mut app, &p, &status());
        assert_eq!(table_names(&s).len(), 6);
    }

    #[test]
    fn one_thread_view() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        // The first draw tells the app which threads exist.
        screen(&mut app, &p, &status());
        key(&mut app, KeyCode::Char('t'));
        let s = screen(&mut app, &p, &status());
        assert!(s.join("\n").contains("thread MainThread"));
        assert_eq!(
            table_names(&s),
            ["compute", "work", "fib", "main"],
            "{}",
            s.join("\n")
        );
        // Percentages are of this thread's 6 samples.
        assert!(find(&s, "main (main.py)").contains("100.00%"));
        assert!(find(&s, "Elapsed").contains("Samples 6"));
        assert!(find(&s, "Elapsed").contains("GIL 100.0%"));
        key(&mut app, KeyCode::Char('t'));
        let s = screen(&mut app, &p, &status());
        assert!(s.join("\n").contains("thread worker"));
        assert_eq!(table_names(&s), ["wait", "run"]);
        assert!(find(&s, "Elapsed").contains("Active 100.0%"));
        key(&mut app, KeyCode::Char('t'));
        let s = screen(&mut app, &p, &status());
        assert!(s.join("\n").contains("all threads (2)"));
    }

    #[test]
    fn callers_and_callees_view() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        key(&mut app, KeyCode::Char('2'));
        screen(&mut app, &p, &status());
        // The top row by %Total is work.
        key(&mut app, KeyCode::Enter);
        let s = screen(&mut app, &p, &status());
        let all = s.join("\n");
        assert!(
            all.contains("Callers and callees of work (main.py)"),
            "{all}"
        );
        assert!(find(&s, "Callers and callees").contains("own 10.00%"));
        assert!(find(&s, "Callers and callees").contains("total 60.00%"));
        let called_by = s.iter().position(|l| l.contains("Called by")).unwrap();
        let calls = s.iter().position(|l| l.contains("Calls (10.00%")).unwrap();
        assert!(called_by < calls);
        let main = s.iter().position(|l| l.contains("main (main.py)")).unwrap();
        assert!(called_by < main && main < calls);
        assert!(s[main].contains("60.00%"));
        let compute = s
            .iter()
            .position(|l| l.contains("compute (main.py)"))
            .unwrap();
        assert!(compute > calls && s[compute].contains("40.00%"));
        assert!(find(&s, "fib (main.py)").contains("10.00%"));
        // Callers then callees: main, compute, fib; Down and Enter open compute's.
        key(&mut app, KeyCode::Down);
        key(&mut app, KeyCode::Enter);
        let s = screen(&mut app, &p, &status());
        assert!(
            s.join("\n")
                .contains("Callers and callees of compute (main.py)")
        );
        key(&mut app, KeyCode::Esc);
        key(&mut app, KeyCode::Esc);
        let s = screen(&mut app, &p, &status());
        assert!(s.join("\n").contains("Function (file)"));
        // main has no caller: it is where the stacks start.
        key(&mut app, KeyCode::Down);
        key(&mut app, KeyCode::Enter);
        let s = screen(&mut app, &p, &status());
        assert!(
            s.join("\n").contains("Called by (60.00% with no caller"),
            "{}",
            s.join("\n")
        );
        assert!(s.join("\n").contains("(none)"));
    }

    #[test]
    fn help_overlay() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        key(&mut app, KeyCode::Char('?'));
        let s = screen(&mut app, &p, &status());
        let all = s.join("\n");
        assert!(all.contains("prof top keys"));
        for (k, what) in KEYS {
            assert!(all.contains(what), "{what:?} ({k}) missing:\n{all}");
        }
        key(&mut app, KeyCode::Char('x'));
        let s = screen(&mut app, &p, &status());
        assert!(!s.join("\n").contains("prof top keys"));
    }

    #[test]
    fn states_and_messages() {
        let p = Profile::new(
            crate::profile::ProfileMeta::new("python app.py", 100.0, std::time::UNIX_EPOCH),
            ProfileOptions::default(),
        );
        let mut app = App::new();
        let mut st = Status {
            target: TargetState::Starting,
            log: Some("/tmp/prof-top-1.log".into()),
            ..status()
        };
        let all = screen(&mut app, &p, &st).join("\n");
        assert!(all.contains("waiting for Python"));
        assert!(all.contains("Waiting for the command to start Python"));
        assert!(all.contains("/tmp/prof-top-1.log"));
        st.target = TargetState::Running;
        let all = screen(&mut app, &p, &st).join("\n");
        assert!(all.contains("--idle"));
        st.target = TargetState::Exited { code: Some(3) };
        let all = screen(&mut app, &p, &st).join("\n");
        assert!(all.contains("target exited (code 3)"));
        st.target = TargetState::NotPython;
        let all = screen(&mut app, &p, &st).join("\n");
        assert!(all.contains("not a Python process"));

        let p = two_threads(ProfileOptions::default());
        key(&mut app, KeyCode::Char(' '));
        let all = screen(&mut app, &p, &status()).join("\n");
        assert!(all.contains("PAUSED"));
    }

    #[test]
    fn scrolling_keeps_the_highlight_visible() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        // 10 lines: 3 header, 1 footer, 1 table header, 5 rows.
        let s = screen_sized(&mut app, &p, &status(), 160, 10);
        assert_eq!(table_names(&s).len(), 5);
        key(&mut app, KeyCode::End);
        let s = screen_sized(&mut app, &p, &status(), 160, 10);
        assert_eq!(
            table_names(&s),
            ["wait", "work", "fib", "main", "run"],
            "{}",
            s.join("\n")
        );
        key(&mut app, KeyCode::Home);
        let s = screen_sized(&mut app, &p, &status(), 160, 10);
        assert_eq!(table_names(&s)[0], "compute");
    }

    #[test]
    fn narrow_screens_wrap_the_header_between_fields() {
        let p = two_threads(ProfileOptions::default());
        let mut app = App::new();
        let s = screen_sized(&mut app, &p, &status(), 50, 20);
        let all = s.join("\n");
        for field in [
            "Elapsed 0.1s",
            "Rate 100.0 of 100 Hz",
            "Dropped 2",
            "Errors 3",
        ] {
            assert!(all.contains(field), "{field:?} cut:\n{all}");
        }
        assert!(s.iter().all(|l| l.chars().count() == 50));
        assert_eq!(table_names(&s)[0], "compute");
    }

    #[test]
    fn labels_fit() {
        assert_eq!(fit_label("f", "a.py", Some(3), 40), "f (a.py:3)");
        let long = "/very/long/path/to/some/package/module.py";
        let s = fit_label("handler", long, Some(12), 30);
        assert_eq!(s.chars().count(), 30);
        assert!(
            s.starts_with("handler (…") && s.ends_with("module.py:12)"),
            "{s}"
        );
        let s = fit_label("a_very_long_function_name", long, None, 12);
        assert_eq!(s.chars().count(), 12);
        assert!(s.ends_with('…'));
        assert_eq!(fmt_duration(75.0), "1m15s");
        assert_eq!(fmt_duration(3723.0), "1h02m");
        assert_eq!(fmt_secs(0.04), "0.04s");
    }
}
