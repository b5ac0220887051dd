//! Styles, with and without colour (NO_COLOR: bold, reverse and underline
//! only, so that nothing relies on colour alone).

use ratatui::style::{Color, Modifier, Style};

#[derive(Clone, Copy, Debug)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub fn new(color: bool) -> Theme {
        Theme { color }
    }

    fn c(&self, fg: Color) -> Style {
        if self.color {
            Style::default().fg(fg)
        } else {
            Style::default()
        }
    }

    pub fn normal(&self) -> Style {
        Style::default()
    }
    pub fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().add_modifier(Modifier::DIM)
        }
    }
    pub fn bold(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
    pub fn header(&self) -> Style {
        self.c(Color::Cyan).add_modifier(Modifier::BOLD)
    }
    pub fn label(&self) -> Style {
        self.c(Color::Cyan).add_modifier(Modifier::BOLD)
    }
    pub fn error(&self) -> Style {
        self.c(Color::Red).add_modifier(Modifier::BOLD)
    }
    pub fn bad(&self) -> Style {
        self.c(Color::Red)
    }
    pub fn warn(&self) -> Style {
        self.c(Color::Yellow)
    }
    pub fn good(&self) -> Style {
        self.c(Color::Green)
    }
    pub fn accent(&self) -> Style {
        self.c(Color::Magenta)
    }
    /// The selected row.
    pub fn selected(&self) -> Style {
        Style::default().add_modifier(Modifier::REVERSED)
    }
    /// A failure that just arrived.
    pub fn fresh(&self) -> Style {
        if self.color {
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        }
    }
    pub fn border(&self, focused: bool) -> Style {
        match (focused, self.color) {
            (true, true) => Style::default()
                .fg(Color::Cyan)
                .add_modifier(Modifier::BOLD),
            (true, false) => Style::default().add_modifier(Modifier::BOLD),
            (false, true) => Style::default().fg(Color::DarkGray),
            (false, false) => Style::default(),
        }
    }
    pub fn status(&self) -> Style {
        if self.color {
            Style::default().bg(Color::Blue).fg(Color::White)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
    pub fn status_alert(&self) -> Style {
        if self.color {
            Style::default()
                .bg(Color::Red)
                .fg(Color::White)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        }
    }
    pub fn banner(&self) -> Style {
        if self.color {
            Style::default().fg(Color::Black).bg(Color::Yellow)
        } else {
            Style::default().add_modifier(Modifier::REVERSED)
        }
    }
    pub fn state(&self, s: crate::event::TcpState) -> Style {
        use crate::event::TcpState::*;
        match s {
            Listen => self.good(),
            TimeWait | FinWait2 => self.warn(),
            CloseWait => self.bad(),
            Established => self.c(Color::Blue),
            _ => self.normal(),
        }
    }
}
