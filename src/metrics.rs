//! Error metrics, summed per rank and combined with one allreduce.

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
}
