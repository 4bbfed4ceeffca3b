//! The loader thread: the first model as soon as it can be read, then a look at model.json's
//! tag every `--poll-seconds`, and a new model (and `--data` matched to it) swapped in when the
//! tag changes. A model that fails to load or validate is refused and counted, and the same
//! publication is not tried again; storage errors are retried on the next look.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use super::loaded::{unix_now, Loaded, Sources};
use super::App;
use crate::error::{Error, Result};
use crate::mf::meta::MODEL_JSON;
use crate::store::{block_on, Tag};

/// Looks before the first model loads when polling is off.
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(5);

pub fn start(app: Arc<App>, sources: Sources, poll: Option<Duration>) -> Result<()> {
    thread::Builder::new()
        .name("funksvd-reload".into())
        .spawn(move || watch(&app, &sources, poll))
        .map(|_| ())
        .map_err(|e| Error::runtime(format!("cannot start the model loader: {e}")))
}

fn watch(app: &App, sources: &Sources, poll: Option<Duration>) {
    // The publication last refused: not tried again until model.json changes.
    let mut refused: Option<Tag> = None;
    let mut said_waiting = false;
    // Storage failing: said once when it starts and once when it ends, counted at every look.
    let mut outage = false;
    loop {
        let served = app.current();
        let looked = look(sources, served.as_deref(), refused.as_ref());
        if outage && !matches!(looked, Err((_, None))) {
            log::info!("{} answers again", sources.model.url());
            outage = false;
        }
        match looked {
            Ok(None) if served.is_none() && refused.is_none() && !said_waiting => {
                log::info!(
                    "no model at {} yet: looking again every {:.0} s",
                    sources.model.url(),
                    poll.unwrap_or(FIRST_LOAD_RETRY).as_secs_f64()
                );
                said_waiting = true;
            }
            Ok(None) => {}
            Ok(Some(loaded)) => {
                log::info!(
                    "serving model {} ({} users, {} items, {} factors; loaded in {:.2} s){}",
                    loaded.version,
                    loaded.model.user_ids.len(),
                    loaded.model.item_ids.len(),
                    loaded.model.meta.factors,
                    loaded.load_seconds,
                    match served {
                        Some(old) => format!(", in place of {}", old.version),
                        None => String::new(),
                    }
                );
                app.swap(loaded);
                app.metrics.reloaded();
                refused = None;
            }
            Err((e, tag)) => {
                let kept = match &served {
                    Some(old) => format!("; still serving {}", old.version),
                    None => "; nothing to serve yet".to_string(),
                };
                match tag {
                    Some(_) => log::warn!("model refused: {e}{kept}"),
                    None if !outage => {
                        log::warn!("model not loaded: {e}{kept}; trying again at every look")
                    }
                    None => {}
                }
                outage |= tag.is_none();
                app.metrics.reload_failed(unix_now(), e.to_string());
                if tag.is_some() {
                    refused = tag;
                }
            }
        }
        let pause = match (poll, app.current().is_some()) {
            (Some(p), _) => p,
            (None, false) => FIRST_LOAD_RETRY,
            (None, true) => return,
        };
        thread::sleep(pause);
    }
}

/// One look: a new model if model.json changed since `served` (and is not the one `refused`),
/// or the error and the tag of the publication that failed (`None`: storage failed, retry).
fn look(
    sources: &Sources,
    served: Option<&Loaded>,
    refused: Option<&Tag>,
) -> std::result::Result<Option<Loaded>, (Error, Option<Tag>)> {
    let key = sources.model.child_key(MODEL_JSON);
    let tag = block_on(sources.model.tag(&key)).map_err(|e| (e, None))?;
    // Not published yet (the server may start before the first training ends).
    let Some(tag) = tag else {
        return Ok(None);
    };
    if served.and_then(|m| m.tag.as_ref()) == Some(&tag) || refused == Some(&tag) {
        return Ok(None);
    }
    match Loaded::load(sources) {
        Ok(loaded) => Ok(Some(loaded)),
        Err(e @ Error::Usage(_)) => Err((e, Some(tag))),
        Err(e) => Err((e, None)),
    }
}
