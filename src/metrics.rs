//! Error metrics and ranking metrics, summed per rank and combined with one allreduce.

/// Sums of squared and absolute errors over `n` predictions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorSums {
    pub squared: f64,
    pub absolute: f64,
    pub n: f64,
}

impl ErrorSums {
    #[inline]
    pub fn add(&mut self, actual: f32, predicted: f32) {
        let e = (actual - predicted) as f64;
        self.squared += e * e;
        self.absolute += e.abs();
        self.n += 1.0;
    }

    pub fn rmse(&self) -> Option<f64> {
        (self.n > 0.0).then(|| (self.squared / self.n).sqrt())
    }

    pub fn mae(&self) -> Option<f64> {
        (self.n > 0.0).then(|| self.absolute / self.n)
    }

    /// As three floats, for an allreduce.
    pub fn to_array(self) -> [f64; 3] {
        [self.squared, self.absolute, self.n]
    }

    pub fn from_slice(v: &[f64]) -> ErrorSums {
        ErrorSums {
            squared: v[0],
            absolute: v[1],
            n: v[2],
        }
    }
}

/// Ranking quality at one cut-off `k`, summed over users (each user: the top-N list a model
/// gave, against the items the user went on to interact with). Binary relevance; the usual
/// definitions (as RecBole and Spark's RankingMetrics):
///
/// - precision@k: relevant items in the top k, over k;
/// - recall@k: relevant items in the top k, over the user's relevant items;
/// - ndcg@k: DCG (1 / log2(position + 1) per relevant item in the top k) over the best DCG the
///   user's relevant items allow;
/// - map@k: the mean, over min(k, relevant items), of the precision at each relevant position;
/// - hit rate@k: whether any relevant item is in the top k.
///
/// Users without relevant items are not counted (there is nothing to find).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RankSums {
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
    pub hits: f64,
    pub users: f64,
    /// The sum of the users' NDCG squared (for the mean's standard error).
    pub ndcg_squares: f64,
}

impl RankSums {
    /// Add one user: `list` (items, best first; only its first `k` count) against `relevant`
    /// (sorted ascending, no repeats).
    pub fn add(&mut self, list: &[u32], relevant: &[u32], k: usize) {
        if relevant.is_empty() || k == 0 {
            return;
        }
        let mut found = 0usize;
        let (mut dcg, mut precisions) = (0.0f64, 0.0f64);
        for (position, item) in list.iter().take(k).enumerate() {
            if relevant.binary_search(item).is_ok() {
                found += 1;
                dcg += 1.0 / (position as f64 + 2.0).log2();
                precisions += found as f64 / (position as f64 + 1.0);
            }
        }
        let ideal: f64 = (0..relevant.len().min(k))
            .map(|p| 1.0 / (p as f64 + 2.0).log2())
            .sum();
        self.precision += found as f64 / k as f64;
        self.recall += found as f64 / relevant.len() as f64;
        self.ndcg += dcg / ideal;
        self.ndcg_squares += (dcg / ideal).powi(2);
        self.map += precisions / relevant.len().min(k) as f64;
        self.hits += (found > 0) as u8 as f64;
        self.users += 1.0;
    }

    /// The floats of `to_array`.
    pub const LEN: usize = 7;

    /// As `LEN` floats, for an allreduce.
    pub fn to_array(self) -> [f64; Self::LEN] {
        [
            self.precision,
            self.recall,
            self.ndcg,
            self.map,
            self.hits,
            self.users,
            self.ndcg_squares,
        ]
    }

    pub fn from_slice(v: &[f64]) -> RankSums {
        RankSums {
            precision: v[0],
            recall: v[1],
            ndcg: v[2],
            map: v[3],
            hits: v[4],
            users: v[5],
            ndcg_squares: v[6],
        }
    }

    /// The standard error of the mean NDCG (over the users counted: of a sample of the
    /// users, how far its mean may lie from every user's), or None below two users.
    pub fn ndcg_standard_error(&self) -> Option<f64> {
        let n = self.users;
        (n > 1.0).then(|| {
            let mean = self.ndcg / n;
            let variance = ((self.ndcg_squares - n * mean * mean) / (n - 1.0)).max(0.0);
            (variance / n).sqrt()
        })
    }

    /// The means over the users counted: (precision, recall, ndcg, map, hit rate), or None
    /// without users.
    pub fn means(&self) -> Option<[f64; 5]> {
        (self.users > 0.0).then(|| {
            [self.precision, self.recall, self.ndcg, self.map, self.hits].map(|v| v / self.users)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmse_and_mae_of_known_errors() {
        let mut s = ErrorSums::default();
        assert_eq!(s.rmse(), None);
        s.add(3.0, 1.0);
        s.add(1.0, 1.0);
        assert_eq!(s.rmse(), Some(2.0f64.sqrt()));
        assert_eq!(s.mae(), Some(1.0));
        assert_eq!(ErrorSums::from_slice(&s.to_array()), s);
    }

    #[test]
    fn ranking_metrics_of_a_hand_computed_example() {
        // Top 4: items 7, 3, 9, 1; the user went on to interact with 3, 1 and 5.
        let mut s = RankSums::default();
        s.add(&[7, 3, 9, 1], &[1, 3, 5], 4);
        let [precision, recall, ndcg, map, hit] = s.means().unwrap();
        assert_eq!(precision, 2.0 / 4.0);
        assert_eq!(recall, 2.0 / 3.0);
        // DCG: hits at positions 2 and 4 -> 1/log2(3) + 1/log2(5); ideal: 3 hits at 1, 2, 3.
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let ideal = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!((ndcg - dcg / ideal).abs() < 1e-12);
        // AP: precision 1/2 at position 2 and 2/4 at position 4, over min(4, 3) = 3.
        assert!((map - (0.5 + 0.5) / 3.0).abs() < 1e-12);
        assert_eq!(hit, 1.0);
        // A second user with nothing found halves the means; one with nothing relevant is not
        // counted.
        s.add(&[2, 4], &[8], 2);
        s.add(&[2, 4], &[], 2);
        assert_eq!(s.users, 2.0);
        assert_eq!(s.means().unwrap()[4], 0.5);
        // Only the first k of a longer list count.
        let mut cut = RankSums::default();
        cut.add(&[9, 8, 3], &[3], 2);
        assert_eq!(cut.means().unwrap(), [0.0; 5]);
        assert_eq!(RankSums::from_slice(&s.to_array()), s);
        assert_eq!(RankSums::default().means(), None);
    }

    #[test]
    fn the_standard_error_of_the_mean_ndcg() {
        // Two users: NDCG 1 and 0; sample variance 0.5, standard error sqrt(0.5 / 2) = 0.5.
        let mut s = RankSums::default();
        s.add(&[1], &[1], 1);
        assert_eq!(s.ndcg_standard_error(), None);
        s.add(&[2], &[1], 1);
        assert!((s.ndcg_standard_error().unwrap() - 0.5).abs() < 1e-12);
        // Equal users: no spread.
        let mut same = RankSums::default();
        for _ in 0..3 {
            same.add(&[1], &[1], 1);
        }
        assert_eq!(same.ndcg_standard_error(), Some(0.0));
    }
}
