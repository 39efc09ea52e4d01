//! The state of `wsgw top` and how it is drawn: pure, so the tests drive it with ratatui's test
//! backend.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table, TableState},
};
use wsgw::protocol::admin_pb::NodeStats;

/// Samples kept for the sparklines (one per refresh).
pub const HISTORY: usize = 300;
/// A node not heard from for this long is shown as gone.
const STALE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Connections,
    MessagesIn,
    UpstreamP99,
}

impl SortKey {
    fn next(self) -> Self {
        match self {
            Self::Name => Self::Connections,
            Self::Connections => Self::MessagesIn,
            Self::MessagesIn => Self::UpstreamP99,
            Self::UpstreamP99 => Self::Name,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Connections => "connections",
            Self::MessagesIn => "in/s",
            Self::UpstreamP99 => "upstream p99",
        }
    }
}

/// An operator action on one node, awaiting confirmation or done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Drain(String),
    Redirect(String),
}

/// One node's row.
pub struct NodeView {
    pub stats: Option<NodeStats>,
    pub heard: Option<Instant>,
    pub error: Option<String>,
}

/// What a key press asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Nothing,
    Quit,
    Run(Action),
}

pub struct App {
    pub nodes: BTreeMap<String, NodeView>,
    pub sort: SortKey,
    pub selected: usize,
    pub confirm: Option<Action>,
    pub status: String,
    pub connections: VecDeque<u64>,
    pub messages_in: VecDeque<u64>,
}

impl App {
    pub fn new() -> Self {
        Self {
            nodes: BTreeMap::new(),
            sort: SortKey::Name,
            selected: 0,
            confirm: None,
            status: String::new(),
            connections: VecDeque::new(),
            messages_in: VecDeque::new(),
        }
    }

    /// A fresh sample from `node`.
    pub fn update(&mut self, node: &str, stats: NodeStats, now: Instant) {
        let view = self.view(node);
        view.stats = Some(stats);
        view.heard = Some(now);
        view.error = None;
    }

    /// `node` could not be reached.
    pub fn failed(&mut self, node: &str, error: String) {
        self.view(node).error = Some(error);
    }

    fn view(&mut self, node: &str) -> &mut NodeView {
        self.nodes.entry(node.to_owned()).or_insert(NodeView {
            stats: None,
            heard: None,
            error: None,
        })
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = &NodeStats> {
        self.nodes.values().filter(move |v| alive(v, now)).filter_map(|v| v.stats.as_ref())
    }

    /// Appends the cluster totals to the sparkline history (call once per refresh).
    pub fn sample(&mut self, now: Instant) {
        let conns = self.live(now).map(|s| s.connections.max(0) as u64).sum();
        let msgs = self.live(now).map(|s| s.messages_in_per_s as u64).sum();
        for (h, v) in [(&mut self.connections, conns), (&mut self.messages_in, msgs)] {
            h.push_back(v);
            if h.len() > HISTORY {
                h.pop_front();
            }
        }
    }

    /// Node names in display order.
    pub fn order(&self) -> Vec<String> {
        let mut names: Vec<&String> = self.nodes.keys().collect();
        let stat = |n: &String| self.nodes.get(n).and_then(|v| v.stats.clone()).unwrap_or_default();
        match self.sort {
            SortKey::Name => {}
            SortKey::Connections => names.sort_by_key(|n| std::cmp::Reverse(stat(n).connections)),
            SortKey::MessagesIn => names
                .sort_by(|a, b| stat(b).messages_in_per_s.total_cmp(&stat(a).messages_in_per_s)),
            SortKey::UpstreamP99 => {
                names.sort_by(|a, b| stat(b).upstream_p99_ms.total_cmp(&stat(a).upstream_p99_ms))
            }
        }
        names.into_iter().cloned().collect()
    }

    fn selected_name(&self) -> Option<String> {
        self.order().get(self.selected).cloned()
    }

    /// Handles a key (as a character; arrows are mapped to j/k by the caller).
    pub fn key(&mut self, key: char) -> Command {
        if let Some(action) = self.confirm.take() {
            return match key {
                'y' | 'Y' => Command::Run(action),
                _ => {
                    self.status = "cancelled".into();
                    Command::Nothing
                }
            };
        }
        match key {
            'q' => return Command::Quit,
            'j' => self.selected = (self.selected + 1).min(self.nodes.len().saturating_sub(1)),
            'k' => self.selected = self.selected.saturating_sub(1),
            's' => self.sort = self.sort.next(),
            'd' => self.confirm = self.selected_name().map(Action::Drain),
            'r' => self.confirm = self.selected_name().map(Action::Redirect),
            _ => {}
        }
        Command::Nothing
    }

    pub fn draw(&self, frame: &mut Frame<'_>, now: Instant) {
        let [table_area, sparks, footer] =
            Layout::vertical([Constraint::Min(5), Constraint::Length(8), Constraint::Length(1)])
                .areas(frame.area());
        let header = [
            "NODE", "READY", "CONNS", "USERS", "IN/s", "OUT/s", "UP p50", "UP p99", "RETRIES",
            "DROPS", "BACKENDS", "STATE",
        ];
        let mut rows: Vec<Row> = self.order().iter().map(|n| self.row(n, now)).collect();
        rows.push(self.totals(now));
        let widths = [
            Constraint::Length(16),
            Constraint::Length(5),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Min(8),
        ];
        let title =
            format!(" wsgw top — {} node(s), sorted by {} ", self.nodes.len(), self.sort.label());
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(Style::default().add_modifier(Modifier::BOLD)))
            .block(Block::default().borders(Borders::ALL).title(title))
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(Some(self.selected));
        frame.render_stateful_widget(table, table_area, &mut state);

        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(sparks);
        let spark = |title: String, data: &VecDeque<u64>| {
            let data: Vec<u64> = data.iter().copied().collect();
            Sparkline::default()
                .block(Block::default().borders(Borders::ALL).title(title))
                .data(data)
                .style(Style::default().fg(Color::Cyan))
        };
        let last = |h: &VecDeque<u64>| h.back().copied().unwrap_or(0);
        frame.render_widget(
            spark(format!(" connections: {} ", last(&self.connections)), &self.connections),
            left,
        );
        frame.render_widget(
            spark(format!(" messages in/s: {} ", last(&self.messages_in)), &self.messages_in),
            right,
        );
        frame.render_widget(Paragraph::new(self.footer()), footer);
    }

    fn footer(&self) -> Line<'static> {
        match &self.confirm {
            Some(Action::Drain(n)) => {
                format!("Drain node {n}? Its clients are redirected, then it exits. [y/N]").into()
            }
            Some(Action::Redirect(n)) => {
                format!("Redirect half of node {n}'s clients to its peers? [y/N]").into()
            }
            None if !self.status.is_empty() => format!("{}   (q quit)", self.status).into(),
            None => "q quit  ↑/↓ select  s sort  d drain  r redirect half".into(),
        }
    }

    fn row(&self, name: &str, now: Instant) -> Row<'static> {
        let Some(view) = self.nodes.get(name) else { return Row::new([name.to_owned()]) };
        let Some(s) = &view.stats else {
            let why = view.error.clone().unwrap_or_else(|| "connecting".into());
            return Row::new([Cell::from(name.to_owned()), Cell::from(""), Cell::from(why)]);
        };
        let gone = !alive(view, now);
        let healthy = s.backends.iter().filter(|b| b.healthy).count();
        let state = match (gone, &view.error) {
            (true, Some(e)) => format!("gone: {e}"),
            (true, None) => "gone".into(),
            _ => s.phase.clone(),
        };
        let style = if gone { Style::default().fg(Color::DarkGray) } else { Style::default() };
        Row::new([
            name.to_owned(),
            if s.ready { "yes".into() } else { "no".into() },
            s.connections.to_string(),
            s.users.to_string(),
            format!("{:.0}", s.messages_in_per_s),
            format!("{:.0}", s.messages_out_per_s),
            format!("{:.1}ms", s.upstream_p50_ms),
            format!("{:.1}ms", s.upstream_p99_ms),
            s.push_retries.to_string(),
            s.outbound_dropped.to_string(),
            format!("{healthy}/{}", s.backends.len()),
            state,
        ])
        .style(style)
    }

    fn totals(&self, now: Instant) -> Row<'static> {
        let live: Vec<&NodeStats> = self.live(now).collect();
        let sum = |f: fn(&NodeStats) -> f64| live.iter().map(|s| f(s)).sum::<f64>();
        Row::new([
            "TOTAL".to_owned(),
            format!("{}/{}", live.iter().filter(|s| s.ready).count(), live.len()),
            format!("{:.0}", sum(|s| s.connections as f64)),
            format!("{:.0}", sum(|s| s.users as f64)),
            format!("{:.0}", sum(|s| s.messages_in_per_s)),
            format!("{:.0}", sum(|s| s.messages_out_per_s)),
            String::new(),
            String::new(),
            format!("{:.0}", sum(|s| s.push_retries as f64)),
            format!("{:.0}", sum(|s| s.outbound_dropped as f64)),
            String::new(),
            String::new(),
        ])
        .style(Style::default().add_modifier(Modifier::BOLD))
    }
}

fn alive(view: &NodeView, now: Instant) -> bool {
    view.heard.is_some_and(|t| now.duration_since(t) < STALE)
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;

    fn stats(id: &str, connections: i64, p99: f64) -> NodeStats {
        NodeStats {
            node_id: id.into(),
            phase: "running".into(),
            ready: true,
            connections,
            users: connections,
            messages_in_per_s: connections as f64 * 2.0,
            upstream_p99_ms: p99,
            ..NodeStats::default()
        }
    }

    fn screen(app: &App, now: Instant) -> String {
        let mut terminal = Terminal::new(TestBackend::new(130, 24)).expect("terminal");
        terminal.draw(|f| app.draw(f, now)).expect("draw");
        let buffer = terminal.backend().buffer().clone();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width).map(|x| buffer[(x, y)].symbol()).collect::<String>() + "\n"
            })
            .collect()
    }

    #[test]
    fn rows_totals_and_sorting() {
        let now = Instant::now();
        let mut app = App::new();
        app.update("alpha", stats("alpha", 10, 5.0), now);
        app.update("beta", stats("beta", 30, 1.0), now);
        app.sample(now);
        let text = screen(&app, now);
        assert!(text.contains("alpha") && text.contains("beta"), "{text}");
        let total = text.lines().find(|l| l.contains("TOTAL")).expect("totals row");
        assert!(total.contains("2/2") && total.contains("40"), "{total}");
        assert!(text.contains("connections: 40"), "{text}");
        assert_eq!(app.order(), ["alpha", "beta"]);
        app.key('s');
        assert_eq!(app.order(), ["beta", "alpha"], "by connections");
        app.key('s');
        app.key('s');
        assert_eq!(app.order(), ["alpha", "beta"], "by upstream p99");
    }

    #[test]
    fn a_node_that_goes_away_stays_visible_as_gone() {
        let then = Instant::now();
        let mut app = App::new();
        app.update("alpha", stats("alpha", 10, 1.0), then);
        app.failed("alpha", "connection refused".into());
        let later = then + Duration::from_secs(10);
        let text = screen(&app, later);
        assert!(text.contains("gone: connection refused"), "{text}");
        let total = text.lines().find(|l| l.contains("TOTAL")).expect("totals row");
        assert!(total.contains("0/0"), "a gone node is not counted: {total}");
    }

    #[test]
    fn drain_and_redirect_need_confirmation() {
        let now = Instant::now();
        let mut app = App::new();
        app.update("alpha", stats("alpha", 1, 1.0), now);
        app.update("beta", stats("beta", 1, 1.0), now);
        app.key('j');
        assert_eq!(app.key('d'), Command::Nothing);
        assert!(screen(&app, now).contains("Drain node beta?"));
        assert_eq!(app.key('y'), Command::Run(Action::Drain("beta".into())));
        app.key('r');
        assert_eq!(app.key('n'), Command::Nothing, "anything but y cancels");
        assert!(screen(&app, now).contains("cancelled"));
        assert_eq!(app.key('q'), Command::Quit);
    }
}
