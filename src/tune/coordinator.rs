//! Who decides: world rank 0 keeps the `Search` and answers the groups' leaders (the lowest
//! rank of each group) by messages; its own group calls it directly. Rank 0 answers between
//! its own epochs, so a leader waits at most one of rank 0's epochs; measurements come only
//! at rungs, so that wait is rare. Groups never wait for each other otherwise (asynchronous
//! ASHA: a trial is judged against the trials measured at its rung so far).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::search::{Search, Status};
use crate::collective::Collective;
use crate::error::{Error, Result};

/// What a leader asks.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Next,
    Report {
        trial: usize,
        epoch: usize,
        metric: f64,
        seconds: f64,
    },
    Fail {
        trial: usize,
        epoch: usize,
        seconds: f64,
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Trial(Option<usize>),
    Decision(String),
    Noted,
}

/// What a group's leader needs from the search: the next trial, and a decision at each
/// measurement.
pub trait Director {
    /// The next trial to run; `None` when every trial is taken.
    fn next(&mut self) -> Result<Option<usize>>;
    /// Trial `trial`'s metric after `epoch`: whether it goes on.
    fn report(&mut self, trial: usize, epoch: usize, metric: f64, seconds: f64) -> Result<Status>;
    /// Trial `trial` failed; the search goes on.
    fn fail(&mut self, trial: usize, epoch: usize, seconds: f64, reason: String) -> Result<()>;
    /// Called between epochs: rank 0 answers the other leaders here.
    fn between_epochs(&mut self) -> Result<()>;
}

/// Told each time a trial finishes, and once more (`None`) when the search is over: rank 0
/// saves the trials table and logs.
pub type OnFinished<'a> = Box<dyn FnMut(&Search, Option<usize>) -> Result<()> + 'a>;

/// The search, on world rank 0.
pub struct Coordinator<'a> {
    world: &'a dyn Collective,
    pub search: Search,
    on_finished: OnFinished<'a>,
    /// Leaders of the other groups, and how many of them were told there is nothing left.
    remote_leaders: usize,
    released: usize,
    /// No trial starts after this (`--max-seconds`).
    deadline: Option<Instant>,
}

impl<'a> Coordinator<'a> {
    pub fn new(
        world: &'a dyn Collective,
        search: Search,
        groups: usize,
        deadline: Option<Instant>,
        on_finished: OnFinished<'a>,
    ) -> Self {
        Coordinator {
            world,
            search,
            on_finished,
            remote_leaders: groups - 1,
            released: 0,
            deadline,
        }
    }

    fn next(&mut self) -> Option<usize> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            if !self.search.out_of_time {
                self.search.out_of_time = true;
                log::info!("tune: --max-seconds is up: no new trials; those running finish");
            }
            return None;
        }
        self.search.take_next()
    }

    fn report(&mut self, trial: usize, epoch: usize, metric: f64, seconds: f64) -> Result<Status> {
        let status = self.search.report(trial, epoch, metric, seconds);
        if status.is_final() {
            (self.on_finished)(&self.search, Some(trial))?;
        }
        Ok(status)
    }

    fn fail(&mut self, trial: usize, epoch: usize, seconds: f64, reason: String) -> Result<()> {
        self.search.fail(trial, epoch, seconds, reason);
        (self.on_finished)(&self.search, Some(trial))
    }

    /// The search is over: what is kept of it is saved.
    pub fn conclude(&mut self) -> Result<()> {
        (self.on_finished)(&self.search, None)
    }

    /// Answer every request that has arrived.
    pub fn serve_pending(&mut self) -> Result<()> {
        while let Some((from, bytes)) = self.world.try_receive_bytes() {
            let request: Request = serde_json::from_slice(&bytes).map_err(|e| {
                Error::runtime(format!("tune: a message from rank {from} is garbled ({e})"))
            })?;
            let reply = match request {
                Request::Next => {
                    let next = self.next();
                    self.released += usize::from(next.is_none());
                    Reply::Trial(next)
                }
                Request::Report {
                    trial,
                    epoch,
                    metric,
                    seconds,
                } => Reply::Decision(self.report(trial, epoch, metric, seconds)?.name().into()),
                Request::Fail {
                    trial,
                    epoch,
                    seconds,
                    reason,
                } => {
                    self.fail(trial, epoch, seconds, reason)?;
                    Reply::Noted
                }
            };
            self.world.send_bytes(from, &encode(&reply));
        }
        Ok(())
    }

    /// Answer the other leaders until each was told there is nothing left (rank 0's own group
    /// is done).
    pub fn serve_until_released(&mut self) -> Result<()> {
        while self.released < self.remote_leaders {
            self.serve_pending()?;
            std::thread::sleep(POLL);
        }
        Ok(())
    }
}

/// How long a waiting rank sleeps between looks at its messages.
const POLL: Duration = Duration::from_micros(200);

fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).expect("tune's messages encode")
}

/// The director of rank 0's own group.
pub struct Local<'c, 'a>(pub &'c mut Coordinator<'a>);

impl Director for Local<'_, '_> {
    fn next(&mut self) -> Result<Option<usize>> {
        self.0.serve_pending()?;
        Ok(self.0.next())
    }
    fn report(&mut self, trial: usize, epoch: usize, metric: f64, seconds: f64) -> Result<Status> {
        self.0.report(trial, epoch, metric, seconds)
    }
    fn fail(&mut self, trial: usize, epoch: usize, seconds: f64, reason: String) -> Result<()> {
        self.0.fail(trial, epoch, seconds, reason)
    }
    fn between_epochs(&mut self) -> Result<()> {
        self.0.serve_pending()
    }
}

/// The director of another group's leader: asks rank 0.
pub struct Remote<'a> {
    pub world: &'a dyn Collective,
}

impl Remote<'_> {
    fn call(&self, request: &Request) -> Result<Reply> {
        self.world.send_bytes(0, &encode(request));
        // Rank 0 answers between its epochs; sleep meanwhile (the core may be another's).
        loop {
            if let Some((from, bytes)) = self.world.try_receive_bytes() {
                return serde_json::from_slice(&bytes).map_err(|e| {
                    Error::runtime(format!("tune: a message from rank {from} is garbled ({e})"))
                });
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Director for Remote<'_> {
    fn next(&mut self) -> Result<Option<usize>> {
        match self.call(&Request::Next)? {
            Reply::Trial(t) => Ok(t),
            other => Err(unexpected(&other)),
        }
    }
    fn report(&mut self, trial: usize, epoch: usize, metric: f64, seconds: f64) -> Result<Status> {
        match self.call(&Request::Report {
            trial,
            epoch,
            metric,
            seconds,
        })? {
            Reply::Decision(name) => {
                Status::from_name(&name).ok_or_else(|| unexpected(&Reply::Decision(name)))
            }
            other => Err(unexpected(&other)),
        }
    }
    fn fail(&mut self, trial: usize, epoch: usize, seconds: f64, reason: String) -> Result<()> {
        match self.call(&Request::Fail {
            trial,
            epoch,
            seconds,
            reason,
        })? {
            Reply::Noted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
    fn between_epochs(&mut self) -> Result<()> {
        Ok(())
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::runtime(format!(
        "tune: rank 0 answered {reply:?} out of turn (a bug)"
    ))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::collective::Solo;
    use crate::tune::search::{Asha, Goal};

    #[test]
    fn rank_zeros_own_group_is_answered_directly_and_each_finished_trial_is_told() {
        let told = Rc::new(RefCell::new(Vec::new()));
        let log = told.clone();
        let search = Search::new(vec![4, 4], Some(Asha { grace: 1, eta: 2 }), Goal::Minimise);
        let on_finished: OnFinished = Box::new(move |_, trial| {
            log.borrow_mut().push(trial);
            Ok(())
        });
        let mut c = Coordinator::new(&Solo, search, 1, None, on_finished);
        let mut d = Local(&mut c);
        assert_eq!(d.next().unwrap(), Some(0));
        assert_eq!(d.report(0, 1, 0.9, 0.1).unwrap(), Status::Continued);
        assert_eq!(d.report(0, 4, 0.8, 0.2).unwrap(), Status::Completed);
        assert_eq!(d.next().unwrap(), Some(1));
        d.fail(1, 2, 0.1, "diverged".into()).unwrap();
        assert_eq!(d.next().unwrap(), None);
        c.conclude().unwrap();
        assert_eq!(*told.borrow(), vec![Some(0), Some(1), None]);
        // With one group there is nobody else to release.
        c.serve_until_released().unwrap();
    }

    #[test]
    fn no_trial_starts_after_the_deadline() {
        let search = Search::new(vec![4; 3], None, Goal::Minimise);
        let deadline = Some(Instant::now());
        let mut c = Coordinator::new(&Solo, search, 1, deadline, Box::new(|_, _| Ok(())));
        assert_eq!(Local(&mut c).next().unwrap(), None);
        assert!(c.search.out_of_time);
        assert_eq!(c.search.finished(), 0);
    }
}
