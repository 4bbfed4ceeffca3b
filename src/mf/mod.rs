//! The model core: hyperparameters, the rows training holds, the SGD kernel and prediction,
//! model.json and the model's tables, a loaded `Model` (predict, scores, top-N, similar items;
//! `topn`: top-N for blocks of users by matrix products)
//! and the checkpoint format. No MPI, no async runtime, no command line, no storage: `serve`,
//! `recommend` and the tests use it directly, the trainer (`train`) runs it over a collective,
//! and `model_io` moves its bytes to and from storage. `tests/layout.rs` keeps it so.

pub mod als;
pub mod blas;
pub mod checkpoint;
pub mod fold_in;
pub mod hyper;
pub mod kernel;
pub mod meta;
pub mod model;
pub mod params;
pub mod tables;
pub mod topn;

pub use hyper::{HoldoutBy, Hyper, ImplicitHyper, Objective};
pub use meta::{EpochStats, ModelMeta};
pub use model::{Model, Scored};
pub use params::{Params, ParamsRef, Rows};

/// What a model needs besides its rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Globals {
    pub global_mean: f32,
    /// Predictions are clipped to the training ratings' range.
    pub rating_range: (f32, f32),
}

impl Globals {
    /// What an implicit model records: no mean, predictions (preferences) clipped to [0, 1].
    pub const PREFERENCES: Globals = Globals {
        global_mean: 0.0,
        rating_range: (0.0, 1.0),
    };

    /// What the rows' scores are added to: the global mean in the biased model, else 0.
    pub fn offset(&self, biased: bool) -> f32 {
        if biased {
            self.global_mean
        } else {
            0.0
        }
    }
}
