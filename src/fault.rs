//! Fault injection for the failure tests: `FUNKSVD_FAULT=POINT@RANK:KIND` makes rank RANK fail
//! at the named point, with KIND `panic` (a bug) or `error` (a runtime error), or pause there
//! with KIND `delay-MS` (to order concurrent jobs in a test). Unset, a point costs one
//! environment lookup per call site visit, outside the hot loops.

use crate::error::{Error, Result};

/// Fail here if the environment asks for it.
pub fn point(name: &str, rank: usize) -> Result<()> {
    let Ok(spec) = std::env::var("FUNKSVD_FAULT") else {
        return Ok(());
    };
    match parse(&spec) {
        Some((point, r, kind)) if point == name && r == rank => match kind {
            "panic" => panic!("injected fault at {name} (FUNKSVD_FAULT)"),
            _ if kind.starts_with("delay-") => {
                let ms = kind["delay-".len()..].parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
                Ok(())
            }
            _ => Err(Error::runtime(format!(
                "injected fault at {name} (FUNKSVD_FAULT)"
            ))),
        },
        _ => Ok(()),
    }
}

fn parse(spec: &str) -> Option<(&str, usize, &str)> {
    let (point, rest) = spec.split_once('@')?;
    let (rank, kind) = rest.split_once(':').unwrap_or((rest, "error"));
    Some((point, rank.parse().ok()?, kind))
}

#[cfg(test)]
mod tests {
    #[test]
    fn spec_parses_point_rank_and_kind() {
        assert_eq!(super::parse("epoch@1:panic"), Some(("epoch", 1, "panic")));
        assert_eq!(super::parse("read@0"), Some(("read", 0, "error")));
        assert_eq!(super::parse("read"), None);
    }
}
