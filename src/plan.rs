//! Which rank reads which part of the dataset. Pure and deterministic: rank 0 computes it from
//! the listing and the footers, every rank receives the same plan.
//!
//! Parquet is split by row groups, contiguous in (file, row group) order, balanced by row count;
//! CSV is split into byte ranges balanced by bytes, each rank reading the lines that *start* in
//! its range (see `ingest`). More ranks than row groups simply leaves some ranks without work.

use serde::{Deserialize, Serialize};

/// A file as the planner sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum SourceShape {
    /// Rows per row group.
    Parquet { row_groups: Vec<u64> },
    /// Bytes `data_start..size` hold the rows (after the header line).
    Csv { data_start: u64, size: u64 },
}

/// One unit of reading work.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Task {
    RowGroups { file: usize, row_groups: Vec<usize> },
    CsvRange { file: usize, start: u64, end: u64 },
}

/// Split the files over `ranks` ranks: `result[r]` is rank r's work.
pub fn assign(files: &[SourceShape], ranks: usize) -> Vec<Vec<Task>> {
    assert!(ranks > 0);
    let mut slices: Vec<Vec<Task>> = vec![Vec::new(); ranks];
    assign_row_groups(files, ranks, &mut slices);
    assign_csv_ranges(files, ranks, &mut slices);
    slices
}

/// Row group g goes to the rank whose share of the total rows contains g's midpoint, so every
/// rank's row count is within one row group of the ideal.
fn assign_row_groups(files: &[SourceShape], ranks: usize, slices: &mut [Vec<Task>]) {
    let total: u128 = files
        .iter()
        .map(|f| match f {
            SourceShape::Parquet { row_groups } => row_groups.iter().map(|&r| r as u128).sum(),
            SourceShape::Csv { .. } => 0,
        })
        .sum();
    let mut before: u128 = 0;
    for (file, shape) in files.iter().enumerate() {
        let SourceShape::Parquet { row_groups } = shape else {
            continue;
        };
        for (g, &rows) in row_groups.iter().enumerate() {
            let mid2 = 2 * before + rows as u128; // twice the midpoint, to stay in integers
            let rank = if total == 0 {
                // Only empty row groups: spread them round-robin (they cost a footer read only).
                g % ranks
            } else {
                ((mid2 * ranks as u128) / (2 * total)).min(ranks as u128 - 1) as usize
            };
            before += rows as u128;
            push_row_group(&mut slices[rank], file, g);
        }
    }
}

fn push_row_group(slice: &mut Vec<Task>, file: usize, g: usize) {
    if let Some(Task::RowGroups {
        file: f,
        row_groups,
    }) = slice.last_mut()
    {
        if *f == file {
            row_groups.push(g);
            return;
        }
    }
    slice.push(Task::RowGroups {
        file,
        row_groups: vec![g],
    });
}

/// The concatenated data bytes of all CSV files are cut into `ranks` equal pieces.
fn assign_csv_ranges(files: &[SourceShape], ranks: usize, slices: &mut [Vec<Task>]) {
    let total: u128 = files
        .iter()
        .map(|f| match f {
            SourceShape::Csv { data_start, size } => size.saturating_sub(*data_start) as u128,
            SourceShape::Parquet { .. } => 0,
        })
        .sum();
    if total == 0 {
        return;
    }
    let cut = |r: usize| (total * r as u128 / ranks as u128) as u64;
    let mut before: u64 = 0;
    for (file, shape) in files.iter().enumerate() {
        let SourceShape::Csv { data_start, size } = *shape else {
            continue;
        };
        let len = size.saturating_sub(data_start);
        for (rank, slice) in slices.iter_mut().enumerate() {
            let lo = cut(rank).max(before);
            let hi = cut(rank + 1).min(before + len);
            if lo < hi {
                slice.push(Task::CsvRange {
                    file,
                    start: data_start + (lo - before),
                    end: data_start + (hi - before),
                });
            }
        }
        before += len;
    }
}

/// Rows (Parquet) assigned to each rank, for logs and tests.
pub fn rows_per_rank(files: &[SourceShape], slices: &[Vec<Task>]) -> Vec<u64> {
    slices
        .iter()
        .map(|tasks| {
            tasks
                .iter()
                .map(|t| match t {
                    Task::RowGroups { file, row_groups } => match &files[*file] {
                        SourceShape::Parquet { row_groups: rows } => {
                            row_groups.iter().map(|&g| rows[g]).sum()
                        }
                        SourceShape::Csv { .. } => 0,
                    },
                    Task::CsvRange { .. } => 0,
                })
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parquet(groups: &[u64]) -> SourceShape {
        SourceShape::Parquet {
            row_groups: groups.to_vec(),
        }
    }

    fn covered_row_groups(slices: &[Vec<Task>]) -> Vec<(usize, usize)> {
        let mut all: Vec<(usize, usize)> = slices
            .iter()
            .flatten()
            .flat_map(|t| match t {
                Task::RowGroups { file, row_groups } => {
                    row_groups.iter().map(|&g| (*file, g)).collect::<Vec<_>>()
                }
                Task::CsvRange { .. } => vec![],
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn plan_covers_every_row_group_exactly_once() {
        let files = vec![
            parquet(&[100, 100, 50]),
            parquet(&[10]),
            parquet(&[300, 1, 1, 1]),
        ];
        for ranks in 1..=9 {
            let slices = assign(&files, ranks);
            assert_eq!(slices.len(), ranks);
            let mut expected = vec![];
            for (f, shape) in files.iter().enumerate() {
                if let SourceShape::Parquet { row_groups } = shape {
                    expected.extend((0..row_groups.len()).map(|g| (f, g)));
                }
            }
            assert_eq!(covered_row_groups(&slices), expected, "ranks={ranks}");
        }
    }

    #[test]
    fn plan_balances_rows_within_one_row_group() {
        let groups: Vec<u64> = (0..64).map(|i| 1000 + (i * 37 % 500)).collect();
        let files = vec![parquet(&groups[..20]), parquet(&groups[20..])];
        let total: u64 = groups.iter().sum();
        let largest = *groups.iter().max().unwrap();
        for ranks in [2, 3, 4, 8] {
            let rows = rows_per_rank(&files, &assign(&files, ranks));
            assert_eq!(rows.iter().sum::<u64>(), total);
            let ideal = total / ranks as u64;
            for r in rows {
                assert!(
                    r.abs_diff(ideal) <= largest,
                    "ranks={ranks} rows={r} ideal={ideal}"
                );
            }
        }
    }

    #[test]
    fn more_ranks_than_row_groups_leaves_empty_slices() {
        let files = vec![parquet(&[5, 5])];
        let slices = assign(&files, 8);
        assert_eq!(slices.iter().filter(|s| !s.is_empty()).count(), 2);
        assert_eq!(covered_row_groups(&slices), vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn csv_ranges_tile_the_data_bytes_exactly() {
        let files = vec![
            SourceShape::Csv {
                data_start: 10,
                size: 1000,
            },
            parquet(&[7]),
            SourceShape::Csv {
                data_start: 5,
                size: 77,
            },
        ];
        for ranks in 1..=8 {
            let slices = assign(&files, ranks);
            let mut ranges: Vec<(usize, u64, u64)> = slices
                .iter()
                .flatten()
                .filter_map(|t| match t {
                    Task::CsvRange { file, start, end } => Some((*file, *start, *end)),
                    _ => None,
                })
                .collect();
            ranges.sort();
            // Contiguous and complete per file.
            for (file, (start, size)) in [(0usize, (10u64, 1000u64)), (2, (5, 77))] {
                let mine: Vec<_> = ranges.iter().filter(|r| r.0 == file).collect();
                assert_eq!(mine.first().unwrap().1, start);
                assert_eq!(mine.last().unwrap().2, size);
                for w in mine.windows(2) {
                    assert_eq!(w[0].2, w[1].1);
                }
            }
        }
    }
}
