//! The model: hyperparameters, the SGD kernel, a rank's training data, the distributed loop.

pub mod checkpoint;
pub mod data;
pub mod kernel;
pub mod params;
pub mod train;

pub use data::RankRatings;
pub use train::{EpochStats, Globals, Hyper, Params, TrainState};
