//! Sums across ranks in a fixed order: every float is the sum of the ranks' parts taken in rank
//! order, whatever algorithm the MPI library picks for its own reductions. The implicit
//! trainer's model then depends only on the data, the seed and the rank count, bit for bit.

use std::ops::Range;

use crate::collective::Collective;
use crate::error::Result;

/// `n` things cut into `ranks` contiguous ranges of nearly equal length (the first ones one
/// longer).
pub fn even_ranges(n: usize, ranks: usize) -> Vec<Range<usize>> {
    (0..ranks)
        .map(|r| (n * r / ranks)..(n * (r + 1) / ranks))
        .collect()
}

/// `costs.len()` things cut into `ranks` contiguous ranges of nearly equal total cost: range r
/// ends at the first thing where the running total reaches `r + 1` shares of the whole.
pub fn balanced_ranges(costs: &[u64], ranks: usize) -> Vec<Range<usize>> {
    let total: u64 = costs.iter().sum();
    let mut ranges = Vec::with_capacity(ranks);
    let (mut start, mut running, mut at) = (0, 0u64, 0);
    for r in 0..ranks {
        let goal = (total as u128 * (r as u128 + 1) / ranks as u128) as u64;
        while at < costs.len() && (running < goal || r + 1 == ranks) {
            running += costs[at];
            at += 1;
        }
        ranges.push(start..at);
        start = at;
    }
    ranges
}

fn as_bytes(floats: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every bit pattern of its bytes is a valid u8; u8 needs no
    // alignment.
    unsafe {
        std::slice::from_raw_parts(floats.as_ptr() as *const u8, std::mem::size_of_val(floats))
    }
}

fn floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// Every rank gives its part of a whole (`all`, `ranges` cutting it into one range per rank)
/// and gets back in `sum` the sum over the ranks of its own range, added up in rank order
/// (`add_in_rank_order`).
pub fn reduce_scatter(
    comm: &dyn Collective,
    all: &[f32],
    ranges: &[Range<usize>],
    sum: &mut [f32],
) -> Result<()> {
    if comm.size() == 1 {
        sum.copy_from_slice(&all[ranges[0].clone()]);
        return Ok(());
    }
    let lens: Vec<u64> = ranges.iter().map(|r| (r.len() * 4) as u64).collect();
    let (received, got) = comm.alltoall_flat(as_bytes(all), &lens)?;
    let mut at = 0;
    let parts = got.iter().map(|&len| {
        let part = &received[at..at + len as usize];
        at += len as usize;
        floats(part)
    });
    add_in_rank_order(sum, parts);
    Ok(())
}

/// `sum` = 0 + the first rank's part + the second's + ...: the one order every way of
/// summing across ranks uses, so they all give the same floats.
pub fn add_in_rank_order<P: IntoIterator<Item = f32>>(
    sum: &mut [f32],
    parts: impl IntoIterator<Item = P>,
) {
    sum.fill(0.0);
    for part in parts {
        for (s, v) in sum.iter_mut().zip(part) {
            *s += v;
        }
    }
}

/// Every rank gives the floats of its own range of `all`; every rank gets all of them.
pub fn allgather(comm: &dyn Collective, all: &mut [f32], ranges: &[Range<usize>]) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let parts = comm.allgather_bytes(as_bytes(&all[ranges[comm.rank()].clone()]))?;
    for (range, part) in ranges.iter().zip(parts) {
        for (v, got) in all[range.clone()].iter_mut().zip(floats(&part)) {
            *v = got;
        }
    }
    Ok(())
}

/// Every rank's f64 part of a sum (the same length on every rank), in rank order.
pub fn gather_parts(comm: &dyn Collective, mine: &[f64]) -> Result<Vec<Vec<f64>>> {
    // SAFETY: as `as_bytes`, for f64.
    let bytes = unsafe {
        std::slice::from_raw_parts(mine.as_ptr() as *const u8, std::mem::size_of_val(mine))
    };
    let parts = comm.allgather_bytes(bytes)?;
    Ok(parts
        .iter()
        .map(|p| {
            p.chunks_exact(8)
                .map(|b| f64::from_ne_bytes(b.try_into().expect("8 bytes")))
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;

    #[test]
    fn ranges_cover_everything_once_nearly_evenly() {
        for (n, ranks) in [(0, 3), (10, 3), (7, 8), (1000, 7)] {
            let r = even_ranges(n, ranks);
            assert_eq!(r.len(), ranks);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[ranks - 1].end, n);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].len().abs_diff(w[1].len()) <= 1);
            }
        }
    }

    #[test]
    fn balanced_ranges_cover_everything_once_with_near_equal_costs() {
        // A long tail (the popular things first, as ids often are) and the edge cases.
        let tail: Vec<u64> = (1..=1000u64).map(|i| 1 + 5000 / i).collect();
        for (costs, ranks) in [
            (vec![], 3),
            (vec![5], 3),
            (vec![1; 10], 3),
            (tail.clone(), 2),
            (tail.clone(), 7),
        ] {
            let r = balanced_ranges(&costs, ranks);
            assert_eq!(r.len(), ranks);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[ranks - 1].end, costs.len());
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            // No range is more than one thing's cost over its share.
            let total: u64 = costs.iter().sum();
            let biggest = costs.iter().copied().max().unwrap_or(0);
            for range in &r {
                let cost: u64 = costs[range.clone()].iter().sum();
                assert!(cost <= total / ranks as u64 + biggest + 1, "{r:?}");
            }
        }
        assert_eq!(balanced_ranges(&[1; 10], 3), vec![0..3, 3..6, 6..10]);
    }

    #[test]
    fn one_rank_gets_its_own_floats_back() {
        let all = [1.5f32, -2.0, 3.25];
        let ranges = even_ranges(3, 1);
        let mut sum = [0.0f32; 3];
        reduce_scatter(&Solo, &all, &ranges, &mut sum).unwrap();
        assert_eq!(sum, all);
        let mut copy = all;
        allgather(&Solo, &mut copy, &ranges).unwrap();
        assert_eq!(copy, all);
        assert_eq!(
            gather_parts(&Solo, &[0.5, 2.0]).unwrap(),
            vec![vec![0.5, 2.0]]
        );
    }
}
