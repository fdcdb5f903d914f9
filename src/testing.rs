//! Fixtures shared by unit tests.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressDrawTarget, TermLike};

use crate::config::{self, Stage};
use crate::host::{Current, HostFacts, ReleaseId, ReleaseInfo};

/// A stage named `production` with `hosts` hosts (web1…), plus `extra` TOML.
pub fn stage(hosts: usize, extra: &str) -> Stage {
    let config = config::from_str(Path::new("/p/deploy.toml"), &stage_file(hosts, extra))
        .unwrap_or_else(|e| panic!("{e}"));
    config.stages["production"].clone()
}

/// The message deploy.toml gets for the same file, which must be bad.
pub fn config_error(hosts: usize, extra: &str) -> String {
    match config::from_str(Path::new("/p/deploy.toml"), &stage_file(hosts, extra)) {
        Ok(_) => panic!("expected an error for:\n{extra}"),
        Err(e) => e.to_string(),
    }
}

fn stage_file(hosts: usize, extra: &str) -> String {
    let list: Vec<String> = (1..=hosts)
        .map(|i| format!("{{ name = \"web{i}\", address = \"10.0.0.{}\" }}", 10 + i))
        .collect();
    format!(
        "[app]\nname = \"shop\"\ndeploy_to = \"/srv/shop\"\nsource = \"dist\"\n{extra}\n\
         [stages.production]\nhosts = [{}]\n",
        list.join(", ")
    )
}

pub fn id(n: u32) -> ReleaseId {
    format!("2026112210{n:04}").parse().unwrap()
}

/// Facts for hosts that all run release `current` out of `releases`.
pub fn facts(stage: &Stage, current: Option<u32>, releases: &[u32]) -> BTreeMap<String, HostFacts> {
    stage
        .hosts
        .iter()
        .map(|h| {
            let f = HostFacts {
                deploy_to_exists: true,
                deploy_to_writable: true,
                current: current.map_or(Current::Missing, |n| Current::Release(id(n))),
                releases: releases
                    .iter()
                    .map(|&n| ReleaseInfo {
                        id: id(n),
                        finished: true,
                        bad: false,
                        revision: format!("rev{n}"),
                    })
                    .collect(),
                ..Default::default()
            };
            (h.name.clone(), f)
        })
        .collect()
}

/// A deploy plan of release 3 for every host of `stage`, which run release
/// 2 of releases 1 and 2 (`with_facts`; else as a dry run sees them).
pub fn deploy_plan(
    stage: &Stage,
    with_facts: bool,
    service: Option<&crate::plan::Service>,
) -> Result<crate::plan::Plan, crate::plan::PlanError> {
    let f = facts(stage, Some(2), &[1, 2]);
    crate::plan::deploy(&crate::plan::DeployInput {
        facts: with_facts.then_some(&f),
        service,
        ..deploy_input(stage, &f)
    })
}

/// A deploy of release 3 (revision `abc`) to every host of `stage` as the
/// test run, found as `facts` say, without `[env]`, a digest or a load
/// balancer's view; a test changes what it is about with `..`.
pub fn deploy_input<'a>(
    stage: &'a Stage,
    facts: &'a BTreeMap<String, HostFacts>,
) -> crate::plan::DeployInput<'a> {
    crate::plan::DeployInput {
        stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(facts),
        run: run(),
        env: &[],
        resume: false,
        digest: String::new(),
        service: None,
    }
}

/// A rollback of every host of `stage` to its previous release, as the
/// test run, found as `facts` say; a test changes the rest with `..`.
pub fn rollback_input<'a>(
    stage: &'a Stage,
    facts: &'a BTreeMap<String, HostFacts>,
) -> crate::plan::RollbackInput<'a> {
    crate::plan::RollbackInput {
        stage,
        hosts: &stage.hosts,
        to: None,
        facts,
        run: run(),
        env: &[],
        service: None,
    }
}

pub fn run() -> crate::plan::Run {
    crate::plan::Run {
        id: "run-1".into(),
        by: "ana@laptop".into(),
        rollback_on_abort: false,
        local_dir: None,
        resumes: None,
    }
}

/// A terminal that keeps everything ever written (no scrolling off the
/// top), with the cursor movements indicatif uses.
#[derive(Debug, Clone)]
pub struct Screen(Arc<Mutex<Grid>>);

#[derive(Debug)]
struct Grid {
    rows: Vec<Vec<char>>,
    row: usize,
    col: usize,
    width: usize,
}

impl Screen {
    pub fn new(width: usize) -> Screen {
        Screen(Arc::new(Mutex::new(Grid {
            rows: vec![Vec::new()],
            row: 0,
            col: 0,
            width,
        })))
    }

    /// The screen as text: rows without trailing blanks, and without the
    /// empty rows below the last written one.
    pub fn text(&self) -> String {
        let grid = self.0.lock().unwrap();
        let mut rows: Vec<String> = grid
            .rows
            .iter()
            .map(|r| r.iter().collect::<String>().trim_end().to_string())
            .collect();
        while rows.last().is_some_and(String::is_empty) {
            rows.pop();
        }
        rows.join("\n")
    }

    pub fn target(&self) -> ProgressDrawTarget {
        ProgressDrawTarget::term_like(Box::new(self.clone()))
    }
}

impl Grid {
    fn ensure_row(&mut self) {
        while self.rows.len() <= self.row {
            self.rows.push(Vec::new());
        }
    }

    fn put(&mut self, c: char) {
        match c {
            '\r' => self.col = 0,
            '\n' => {
                self.row += 1;
                self.col = 0;
            }
            c => {
                if self.col >= self.width {
                    self.row += 1;
                    self.col = 0;
                }
                self.ensure_row();
                let row = &mut self.rows[self.row];
                while row.len() <= self.col {
                    row.push(' ');
                }
                row[self.col] = c;
                self.col += 1;
            }
        }
    }

    fn write(&mut self, s: &str) {
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // Skip an escape sequence (colours) up to its final letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                self.put(c);
            }
        }
    }
}

impl TermLike for Screen {
    fn width(&self) -> u16 {
        self.0.lock().unwrap().width as u16
    }

    fn height(&self) -> u16 {
        500
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.row = g.row.saturating_sub(n);
        Ok(())
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.row += n;
        g.ensure_row();
        Ok(())
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.lock().unwrap().col += n;
        Ok(())
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.col = g.col.saturating_sub(n);
        Ok(())
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.write(s);
        g.put('\n');
        Ok(())
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.lock().unwrap().write(s);
        Ok(())
    }

    fn clear_line(&self) -> io::Result<()> {
        let mut g = self.0.lock().unwrap();
        g.ensure_row();
        let row = g.row;
        g.rows[row].clear();
        g.col = 0;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A `Write` whose bytes can be read while a reporter still holds it.
#[derive(Debug, Clone, Default)]
pub struct Buffer(pub Arc<Mutex<Vec<u8>>>);

impl Buffer {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The `op` of host number `host` (0-based) of a stage of `hosts` hosts
/// whose `[lb]` (in `extra`) the test is about.
pub fn lb_action(
    hosts: usize,
    extra: &str,
    op: crate::lb::LbOp,
    host: usize,
) -> crate::lb::LbAction {
    let stage = stage(hosts, extra);
    let driver = stage.lb.clone().expect("a stage with a load balancer");
    let vars = stage.vars(&stage.hosts[host], "");
    let member = driver.member(&crate::lb::HostRef {
        vars: &vars,
        env: &[],
        local_dir: None,
    });
    crate::lb::LbAction { op, driver, member }
}
