//! Taking, keeping and giving back the deploy lock across a stage's hosts
//! (the lock itself lives on the hosts: `host::lock`).

use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::config::{Host, Stage};
use crate::error::Error;
use crate::exit::Exit;
use crate::host::Layout;
use crate::host::lock::{self, Attempt, HeldLock, LockInfo, LockKind};
use crate::shell::Cmd;
use crate::transport::{ExecRequest, Quiet, Transport};
use crate::who;

/// How to behave when the lock is taken.
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    /// Wait up to this long for a live lock to go.
    pub wait: Option<Duration>,
    /// Take over a lock whose run died.
    pub break_stale: bool,
}

/// The lock, held on every host of a run.
pub struct Held<'t, T: Transport> {
    transport: &'t T,
    layout: Layout,
    pub run: String,
    hosts: Vec<String>,
    lease: Duration,
}

/// A unique id for this run: time and pid for people, and 64 random bits
/// so that runs started in the same second with the same pid (containers
/// whose shipit is PID 1) never share one. Letters, digits and `-` only:
/// it names files on the hosts.
pub fn run_id() -> String {
    let now = jiff::Timestamp::now();
    format!(
        "{}-{}-{:016x}",
        now.strftime("%Y%m%dT%H%M%S"),
        std::process::id(),
        random_u64()
    )
}

/// 64 bits from the kernel's random source; where that cannot be read,
/// from the standard library's per-process random hash keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Read;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u64::from_ne_bytes(bytes);
    }
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

pub fn lock_info(
    stage: &Stage,
    run: &str,
    kind: LockKind,
    message: Option<String>,
    lease: Duration,
) -> LockInfo {
    LockInfo {
        run: run.to_string(),
        kind,
        stage: stage.name.clone(),
        by: who::who(),
        machine: who::machine(),
        pid: std::process::id(),
        since: jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        release: None,
        message,
        lease_secs: if kind == LockKind::Manual {
            0
        } else {
            lease.as_secs().max(1)
        },
    }
}

/// True if process `pid` on this machine is alive (and not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

pub fn is_stale(lock: &HeldLock) -> bool {
    lock.is_stale(&who::machine(), pid_alive)
}

/// Takes the lock on every host, all or nothing. A run that finds the lock
/// taken gives back what it took, so two runs can never each hold part of
/// the fleet.
pub async fn acquire<'t, T: Transport>(
    transport: &'t T,
    stage: &Stage,
    hosts: &[Host],
    info: &LockInfo,
    options: &LockOptions,
    mut waiting: impl FnMut(&str),
) -> Result<Held<'t, T>, Error> {
    let layout = Layout::new(&stage.app.deploy_to);
    let mut names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    names.sort();
    let deadline = options.wait.map(|w| Instant::now() + w);
    let mut said_waiting = false;
    // Usually nobody else holds it: ask every host at once. If one refuses,
    // give back what was taken and go host by host in name order: ordered
    // taking guarantees that of two runs racing, one gets every host.
    let mut at_once = true;
    // Until then, a refusal may come from another run's at-once attempt
    // that is about to be given back: try again shortly instead of failing.
    let mut race_until: Option<Instant> = None;
    loop {
        let (taken, refused) = if std::mem::take(&mut at_once) {
            let (taken, refused) = try_together(transport, &layout, &names, info).await?;
            if refused.is_none() {
                (taken, refused)
            } else {
                if !taken.is_empty() {
                    race_until = Some(Instant::now() + RACE_WINDOW);
                }
                release_on(transport, &layout, &taken, &info.run).await;
                try_all(transport, &layout, &names, info).await?
            }
        } else {
            try_all(transport, &layout, &names, info).await?
        };
        let Some((host, held)) = refused else {
            return Ok(Held {
                transport,
                layout,
                run: info.run.clone(),
                hosts: taken,
                lease: Duration::from_secs(info.lease_secs.max(1)),
            });
        };
        release_on(transport, &layout, &taken, &info.run).await;
        let stale = is_stale(&held);
        if stale && options.break_stale {
            let cmd = layout.lock_break(&held.run, info);
            let out = exec(transport, &host, cmd.render()).await?;
            if !out.0 {
                return Err(Error::Unchanged(format!(
                    "{host}: cannot break the stale lock: {}",
                    out.1
                )));
            }
            waiting(&format!(
                "{host}: took over the stale lock of {}",
                held.describe()
            ));
            continue;
        }
        match deadline {
            Some(deadline) if !stale && Instant::now() < deadline => {
                if !said_waiting {
                    waiting(&format!("waiting for the deploy lock: {}", held.describe()));
                    said_waiting = true;
                }
                tokio::time::sleep(Duration::from_secs(2).min(deadline - Instant::now())).await;
            }
            _ if !stale && race_until.is_some_and(|until| Instant::now() < until) => {
                tokio::time::sleep(jitter()).await;
            }
            _ => {
                return Err(Error::LockHeld {
                    stage: stage.name.clone(),
                    host,
                    holder: held.describe(),
                    kind: held.info.as_ref().map(|i| i.kind),
                    age_secs: held.age_secs,
                    stale,
                });
            }
        }
    }
}

/// How long a run that collided with another one's at-once attempt keeps
/// trying, one host after another, before it reports the lock as held.
const RACE_WINDOW: Duration = Duration::from_secs(2);

/// 50 to 250 ms, different in every process, so racing runs do not retry
/// in step.
fn jitter() -> Duration {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
        ^ std::process::id().wrapping_mul(2_654_435_761);
    Duration::from_millis(50 + u64::from(seed % 200))
}

/// Tries every host at once. Returns the hosts taken and the first refusal
/// (in name order), if any.
#[allow(clippy::type_complexity)]
async fn try_together<T: Transport>(
    transport: &T,
    layout: &Layout,
    names: &[String],
    info: &LockInfo,
) -> Result<(Vec<String>, Option<(String, HeldLock)>), Error> {
    let attempts = join_all(
        names
            .iter()
            .map(|host| attempt(transport, layout, host, info)),
    )
    .await;
    let mut taken = Vec::new();
    let mut refused = None;
    let mut problems = Vec::new();
    for (host, result) in names.iter().zip(attempts) {
        match result {
            Ok(Attempt::Acquired) => taken.push(host.clone()),
            Ok(Attempt::Held(held)) => {
                refused.get_or_insert((host.clone(), *held));
            }
            Ok(Attempt::Busy) => problems.push(format!("{host}: unexpected answer `busy`")),
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        release_on(transport, layout, &taken, &info.run).await;
        return Err(Error::Unchanged(format!(
            "{}; nothing was changed",
            problems.join("; ")
        )));
    }
    Ok((taken, refused))
}

async fn attempt<T: Transport>(
    transport: &T,
    layout: &Layout,
    host: &str,
    info: &LockInfo,
) -> Result<Attempt, String> {
    attempt_with(transport, host, layout.lock_acquire(info)).await
}

async fn attempt_with<T: Transport>(
    transport: &T,
    host: &str,
    cmd: crate::shell::Cmd,
) -> Result<Attempt, String> {
    let request = ExecRequest {
        command: cmd.render(),
        stdin: None,
        timeout: Some(lock::COMMAND_TIMEOUT),
    };
    match transport.exec(host, request, &Quiet).await {
        Ok(out) => Attempt::parse(&out.stdout_text()).map_err(|e| {
            format!(
                "{host}: taking the deploy lock failed ({}): {e} {}",
                out.exit,
                out.stderr_tail(3)
            )
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// Tries every host in order; stops at the first refusal.
#[allow(clippy::type_complexity)]
async fn try_all<T: Transport>(
    transport: &T,
    layout: &Layout,
    names: &[String],
    info: &LockInfo,
) -> Result<(Vec<String>, Option<(String, HeldLock)>), Error> {
    let mut taken = Vec::new();
    for host in names {
        let attempt = attempt(transport, layout, host, info).await;
        match attempt {
            Ok(Attempt::Acquired) => taken.push(host.clone()),
            Ok(Attempt::Held(held)) => return Ok((taken, Some((host.clone(), *held)))),
            Ok(Attempt::Busy) => {
                release_on(transport, layout, &taken, &info.run).await;
                return Err(Error::Unchanged(format!(
                    "{host}: unexpected answer `busy` when taking the lock; nothing was changed"
                )));
            }
            Err(problem) => {
                release_on(transport, layout, &taken, &info.run).await;
                return Err(Error::Unchanged(format!("{problem}; nothing was changed")));
            }
        }
    }
    Ok((taken, None))
}

/// Takes the lock for a run that continues another one (`deploy
/// --resume`): on each host, in name order, the lock `take_over` names
/// there (the dead run's) is taken over only while that run still holds
/// it; a host with no lock named is taken as usual. Of two runs doing this
/// at once, the first to take the first host gets every host; the other
/// is told who holds the lock and gives back what it took.
pub async fn take_over<'t, T: Transport>(
    transport: &'t T,
    stage: &Stage,
    hosts: &[Host],
    info: &LockInfo,
    take_over: &std::collections::BTreeMap<String, String>,
) -> Result<Held<'t, T>, Error> {
    let layout = Layout::new(&stage.app.deploy_to);
    let mut names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    names.sort();
    let mut taken = Vec::new();
    for host in &names {
        let cmd = || match take_over.get(host) {
            Some(stale) => layout.lock_break(stale, info),
            None => layout.lock_acquire(info),
        };
        let mut busy_until = None;
        let refused = loop {
            match attempt_with(transport, host, cmd()).await {
                Ok(Attempt::Acquired) => break None,
                Ok(Attempt::Held(held)) => break Some(*held),
                // Someone is taking it over right now: once done, the lock
                // names them.
                Ok(Attempt::Busy) => {
                    let until = *busy_until.get_or_insert(Instant::now() + RACE_WINDOW);
                    if Instant::now() >= until {
                        release_on(transport, &layout, &taken, &info.run).await;
                        return Err(Error::Unchanged(format!(
                            "{host}: another run kept taking over the deploy lock; nothing was changed"
                        )));
                    }
                    tokio::time::sleep(jitter()).await;
                }
                Err(problem) => {
                    release_on(transport, &layout, &taken, &info.run).await;
                    return Err(Error::Unchanged(format!("{problem}; nothing was changed")));
                }
            }
        };
        match refused {
            None => taken.push(host.clone()),
            Some(held) => {
                release_on(transport, &layout, &taken, &info.run).await;
                return Err(Error::LockHeld {
                    stage: stage.name.clone(),
                    host: host.clone(),
                    holder: held.describe(),
                    kind: held.info.as_ref().map(|i| i.kind),
                    age_secs: held.age_secs,
                    stale: is_stale(&held),
                });
            }
        }
    }
    Ok(Held {
        transport,
        layout,
        run: info.run.clone(),
        hosts: taken,
        lease: Duration::from_secs(info.lease_secs.max(1)),
    })
}

async fn exec<T: Transport>(
    transport: &T,
    host: &str,
    command: String,
) -> Result<(bool, String), Error> {
    let request = ExecRequest {
        command,
        stdin: None,
        timeout: Some(lock::COMMAND_TIMEOUT),
    };
    match transport.exec(host, request, &Quiet).await {
        Ok(out) => Ok((out.exit.success(), out.stderr_tail(3))),
        Err(e) => Err(Error::Unchanged(e.to_string())),
    }
}

async fn release_on<T: Transport>(transport: &T, layout: &Layout, hosts: &[String], run: &str) {
    let cmd = layout.lock_release(run).render();
    join_all(hosts.iter().map(|h| exec(transport, h, cmd.clone()))).await;
}

impl<T: Transport> Held<'_, T> {
    /// The hosts it is held on, in name order.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }

    /// Gives the lock back on every host; hosts that cannot be reached keep
    /// it until its lease runs out. Returns those hosts. `first` (the run's
    /// last bookkeeping, per host) runs ahead of it on each host, in the
    /// same round trip; what becomes of it does not hold the lock back.
    pub async fn release(self, first: Option<&dyn Fn(&str) -> Cmd>) -> Vec<String> {
        let unlock = self.layout.lock_release(&self.run);
        let line = |host: &str| match first {
            Some(first) => crate::shell::after(&first(host), &unlock),
            None => unlock.render(),
        };
        let results = join_all(self.hosts.iter().map(|h| exec(self.transport, h, line(h)))).await;
        self.hosts
            .iter()
            .zip(results)
            .filter(|(_, r)| !matches!(r, Ok((true, _))))
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// Refreshes the heartbeat on every host. Err if another run took the
    /// lock over (then this run must stop).
    async fn refresh(&self) -> Result<(), String> {
        let cmd = self.layout.lock_refresh(&self.run).render();
        let results = join_all(
            self.hosts
                .iter()
                .map(|h| exec(self.transport, h, cmd.clone())),
        )
        .await;
        for (host, result) in self.hosts.iter().zip(results) {
            // An unreachable host is the run's problem, not the lock's.
            if let Ok((false, why)) = result {
                return Err(format!("{host}: {why}"));
            }
        }
        Ok(())
    }

    /// Runs `work` while refreshing the lock at a quarter of its lease. If
    /// the lock is lost, `cancel` stops the run at the next step.
    pub async fn keep_while<F: Future>(
        &self,
        cancel: &CancellationToken,
        work: F,
        lost: impl Fn(&str),
    ) -> F::Output {
        let heartbeat = async {
            let period = lock::refresh_period(self.lease);
            loop {
                tokio::time::sleep(period).await;
                if let Err(why) = self.refresh().await {
                    lost(&why);
                    cancel.cancel();
                    return;
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return out,
            () = heartbeat => {}
        }
        // The lock is lost; the run winds down on the cancel.
        work.await
    }
}

/// `shipit STAGE lock`: a manual lock, held until `unlock`.
pub async fn lock_command(ctx: &Context, message: Option<String>) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let transport = super::fleet::connect(stage, &ctx.hosts).await?;
    let info = lock_info(stage, &run_id(), LockKind::Manual, message, Duration::ZERO);
    let result = acquire(
        &transport,
        stage,
        &ctx.hosts,
        &info,
        &LockOptions::default(),
        |m| ctx.note(None, m),
    )
    .await;
    transport.close().await;
    let held = result?;
    ctx.note(
        None,
        &format!(
            "locked stage {} on {} host(s): {}. `shipit {} unlock` removes it",
            stage.name,
            held.hosts.len(),
            info.describe(),
            stage.name
        ),
    );
    Ok(Exit::Success)
}

/// `shipit STAGE unlock`: removes a manual or stale lock; a lock held by a
/// run that is alive only with `--force`.
pub async fn unlock_command(ctx: &Context, force: bool) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let transport = super::fleet::connect(stage, &ctx.hosts).await?;
    let result = async {
        let facts = super::fleet::probe(&transport, stage, &ctx.hosts).await?;
        let layout = Layout::new(&stage.app.deploy_to);
        let mut removed = Vec::new();
        for (host, f) in &facts {
            let Some(held) = &f.lock else { continue };
            let live_run = held
                .info
                .as_ref()
                .is_some_and(|i| i.kind != LockKind::Manual)
                && !is_stale(held);
            if live_run && !force {
                return Err(Error::LockHeld {
                    stage: stage.name.clone(),
                    host: host.clone(),
                    holder: held.describe(),
                    kind: held.info.as_ref().map(|i| i.kind),
                    age_secs: held.age_secs,
                    stale: false,
                });
            }
            let (ok, why) = exec(&transport, host, layout.lock_release(&held.run).render()).await?;
            if !ok {
                return Err(Error::Unchanged(format!(
                    "{host}: could not remove the lock: {why}"
                )));
            }
            removed.push(host.clone());
        }
        if removed.is_empty() {
            ctx.note(None, &format!("stage {} was not locked", stage.name));
        } else {
            ctx.note(
                None,
                &format!("unlocked stage {} on {}", stage.name, removed.join(", ")),
            );
        }
        Ok(Exit::Success)
    }
    .await;
    transport.close().await;
    result
}

/// Runs `work` holding the deploy lock on the context's hosts (refreshing
/// it meanwhile), then gives the lock back. For the short commands that
/// need it (`cleanup`, `exec --lock`); deploy and rollback hold it their
/// own way because their run id names the lock.
pub async fn holding<T, F>(
    ctx: &Context,
    transport: &T,
    kind: LockKind,
    options: &LockOptions,
    message: Option<String>,
    cancel: &CancellationToken,
    work: F,
) -> Result<Exit, Error>
where
    T: Transport,
    F: Future<Output = Result<Exit, Error>>,
{
    let stage = &ctx.stage;
    let info = lock_info(stage, &run_id(), kind, message, stage.rollout.lock_lease);
    let held = acquire(transport, stage, &ctx.hosts, &info, options, |m| {
        ctx.note(None, m)
    })
    .await?;
    let result = held
        .keep_while(cancel, work, |why| {
            ctx.note(None, &format!("lost the deploy lock ({why}); stopping"))
        })
        .await;
    release(ctx, held, None).await;
    result
}

/// Gives the lock back (after `first`, see [`Held::release`]), saying
/// where that was not possible.
pub async fn release<T: Transport>(
    ctx: &Context,
    held: Held<'_, T>,
    first: Option<&dyn Fn(&str) -> Cmd>,
) {
    let kept = held.release(first).await;
    if !kept.is_empty() {
        ctx.note(
            None,
            &format!(
                "could not release the deploy lock on {}; it goes stale once its lease ({}) runs out",
                kept.join(", "),
                humantime::format_duration(ctx.stage.rollout.lock_lease)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs started in the same second by processes with the same pid
    /// (PID 1 in two containers) still get different ids, each a plain
    /// file name.
    #[test]
    fn run_ids_are_unique_and_plain() {
        let ids: std::collections::BTreeSet<String> = (0..1000).map(|_| run_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(
                id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{id}"
            );
            let random = id.rsplit('-').next().unwrap();
            assert_eq!(random.len(), 16, "{id}: 64 random bits");
            assert!(crate::host::lock::check_run_id(id).is_ok());
        }
    }
}
