//! The terminal side of `walspool top`: a guard that restores the terminal on every
//! exit path, the input thread, and the event loop (events → `App` → view).

use std::io::{self, Stdout};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::time::Duration;

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, Event as CtEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::Terminal;

use crate::app::{App, Event, Key, Screen, Thresholds};
use crate::collect::{discover, is_wal_dir, now_ms, Collector};
use crate::view;

/// Runs discovery and the collectors in one thread: every `every`, one snapshot per
/// WAL; every `rescan` (and at the start), the roots are searched again and an
/// [`Event::Wals`] is sent when the set changed. Sends events
/// until the receiver is gone.
pub fn spawn_fleet(
    roots: Vec<PathBuf>,
    max_depth: usize,
    every: Duration,
    rescan: Duration,
    tx: mpsc::Sender<Event>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("walspool-collect".into())
        .spawn(move || {
            let mut cs: Vec<Collector> = Vec::new();
            let mut known: Vec<(String, PathBuf)> = Vec::new();
            let mut last_scan: Option<std::time::Instant> = None;
            loop {
                if last_scan.is_none_or(|t| t.elapsed() >= rescan) {
                    let first = last_scan.is_none();
                    last_scan = Some(std::time::Instant::now());
                    let found = discover(&roots, max_depth);
                    if first || found != known {
                        let mut old = std::mem::take(&mut cs);
                        cs = found
                            .iter()
                            .map(|(_, d)| match old.iter().position(|c| c.dir() == d) {
                                Some(i) => old.swap_remove(i),
                                None => Collector::new(d),
                            })
                            .collect();
                        let names = found
                            .iter()
                            .map(|(n, d)| (n.clone(), d.display().to_string()))
                            .collect();
                        known = found;
                        if tx.send(Event::Wals(names)).is_err() {
                            return;
                        }
                    }
                }
                for c in cs.iter_mut() {
                    let ev = match c.collect() {
                        Ok(s) => Event::Snapshot(Box::new(s)),
                        Err(e) => Event::CollectError(c.dir().display().to_string(), e),
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                if tx.send(Event::Tick(now_ms())).is_err() {
                    return;
                }
                std::thread::sleep(every);
            }
        })
        .expect("spawn collector thread")
}

/// Puts the terminal back as it was: cooked mode, main screen, visible cursor.
/// Safe to call more than once.
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Raw mode + alternate screen for as long as it lives. Dropping it (normal return,
/// `?` error, panic unwinding) restores the terminal; a panic hook restores it before
/// the panic message is printed, and SIGTERM/SIGHUP/SIGINT end the loop cleanly.
#[derive(Debug)]
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    /// Enters raw mode and the alternate screen.
    pub fn enter() -> io::Result<Self> {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                prev(info);
                // A panic on any thread (a collector, the input reader) ends `top`: the
                // terminal is already restored, and drawing on would put it back in raw
                // mode behind the user's back.
                std::process::exit(101);
            }));
        });
        enable_raw_mode()?;
        let guard = TerminalGuard { _private: () };
        execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Maps a terminal key to the dashboard's [`Key`].
pub fn map_key(k: KeyEvent) -> Option<Key> {
    if k.kind != KeyEventKind::Press {
        return None;
    }
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Esc => Key::Esc,
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Tab | KeyCode::Right => Key::Next,
        KeyCode::BackTab | KeyCode::Left => Key::Prev,
        _ => Key::Other,
    })
}

fn spawn_input(tx: mpsc::Sender<Event>, stop: Arc<AtomicBool>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("walspool-input".into())
        .spawn(move || loop {
            if stop.load(Ordering::Relaxed) {
                let _ = tx.send(Event::Key(Key::CtrlC));
                return;
            }
            match event::poll(Duration::from_millis(250)) {
                Ok(true) => {
                    let ev = match event::read() {
                        Ok(CtEvent::Key(k)) => map_key(k).map(Event::Key),
                        Ok(CtEvent::Resize(..)) => Some(Event::Resize),
                        Ok(_) => None,
                        Err(_) => Some(Event::Key(Key::CtrlC)),
                    };
                    if let Some(ev) = ev {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                }
                Ok(false) => {}
                Err(_) => {
                    let _ = tx.send(Event::Key(Key::CtrlC));
                    return;
                }
            }
        })?;
    Ok(())
}

/// Options of `walspool top`.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Roots to search for WAL directories (or WAL directories themselves).
    pub roots: Vec<PathBuf>,
    /// How deep to search under a root.
    pub depth: usize,
    /// How often each WAL is read.
    pub refresh: Duration,
    /// How often the roots are searched again for WALs that appeared or went away.
    pub rescan: Duration,
    /// Warning thresholds.
    pub thresholds: Thresholds,
}

/// Runs the dashboard until the user quits (or a signal asks it to).
pub fn run_top(opts: TopOptions) -> io::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let (tx, rx) = mpsc::channel();
    let mut app = App::new(
        &[],
        opts.thresholds.clone(),
        opts.refresh.as_millis() as u64,
    );
    app.roots = opts.roots.iter().map(|d| d.display().to_string()).collect();
    app.now_ms = now_ms();
    // `top DIR` on one WAL directory opens its detail view.
    let single = opts.roots.len() == 1 && is_wal_dir(&opts.roots[0]);
    let mut opened = false;

    let guard = TerminalGuard::enter()?;
    let mut terminal: Terminal<CrosstermBackend<Stdout>> =
        Terminal::new(CrosstermBackend::new(io::stdout()))?;
    terminal.clear()?;
    spawn_input(tx.clone(), stop)?;
    let _collectors = spawn_fleet(
        opts.roots.clone(),
        opts.depth,
        opts.refresh,
        opts.rescan,
        tx,
    );
    terminal.draw(|f| view::render(&app, f))?;
    while let Ok(ev) = rx.recv() {
        let mut redraw = app.update(ev);
        if single && app.screen == Screen::Overview && app.panels.len() == 1 && !opened {
            opened = true;
            app.screen = Screen::Detail(app.panels[0].dir.clone());
        }
        // Coalesce whatever else is already queued into one redraw.
        while let Ok(ev) = rx.try_recv() {
            redraw |= app.update(ev);
        }
        if app.quit {
            break;
        }
        if redraw {
            terminal.draw(|f| view::render(&app, f))?;
        }
    }
    drop(terminal);
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> Option<Key> {
        map_key(KeyEvent::new(code, modifiers))
    }

    #[test]
    fn keys_map_to_dashboard_keys() {
        let none = KeyModifiers::NONE;
        assert_eq!(press(KeyCode::Char('q'), none), Some(Key::Char('q')));
        assert_eq!(press(KeyCode::Esc, none), Some(Key::Esc));
        assert_eq!(
            press(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::CtrlC)
        );
        assert_eq!(press(KeyCode::Char('c'), none), Some(Key::Char('c')));
        assert_eq!(
            press(KeyCode::Char('?'), KeyModifiers::SHIFT),
            Some(Key::Char('?'))
        );
        assert_eq!(press(KeyCode::Enter, none), Some(Key::Enter));
        assert_eq!(press(KeyCode::Tab, none), Some(Key::Next));
        assert_eq!(press(KeyCode::Right, none), Some(Key::Next));
        assert_eq!(
            press(KeyCode::BackTab, KeyModifiers::SHIFT),
            Some(Key::Prev)
        );
        assert_eq!(press(KeyCode::Down, none), Some(Key::Down));
        assert_eq!(press(KeyCode::Backspace, none), Some(Key::Backspace));
        let mut release = KeyEvent::new(KeyCode::Char('q'), none);
        release.kind = KeyEventKind::Release;
        assert_eq!(map_key(release), None);
    }
}
