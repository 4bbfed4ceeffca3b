//! `funksvd serve`: the flags checked and turned into the server's settings (`crate::serve`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::serve::{self, Settings, Sources};
use crate::store::Location;

pub fn run(args: &ServeArgs) -> Result<()> {
    args.check()?;
    let model = Location::parse(&args.model, "--model")?;
    let data = match &args.data {
        Some(d) => {
            let mut loc = Location::parse(d, "--data")?;
            loc.skip_folder(&model);
            Some(loc)
        }
        None => {
            log::warn!("no --data: recommendations may include the items a user already has");
            None
        }
    };
    let input = args.input.clone();
    let sources = Sources {
        model,
        data,
        input: Arc::new(move |trained| input.input(trained)),
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    serve::run(Settings {
        listen: listen_address(&args.listen)?,
        sources,
        poll: (args.poll_seconds > 0.0).then(|| Duration::from_secs_f64(args.poll_seconds)),
        token: token(args.token_file.as_deref())?,
        max_n: args.max_n,
        timeout: Duration::from_secs_f64(args.timeout_seconds),
        threads,
    })
}

fn listen_address(listen: &str) -> Result<SocketAddr> {
    let bad = |why: String| {
        Error::usage(format!(
            "--listen {listen}: {why} (give HOST:PORT, like 127.0.0.1:8080)"
        ))
    };
    listen
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

/// The token in `--token-file` (surrounding white space trimmed; an empty file is refused).
fn token(file: Option<&str>) -> Result<Option<String>> {
    let Some(file) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::usage(format!("--token-file {file}: cannot read it ({e})")))?;
    match text.trim() {
        "" => Err(Error::usage(format!(
            "--token-file {file}: the file is empty"
        ))),
        t => Ok(Some(t.to_string())),
    }
}
