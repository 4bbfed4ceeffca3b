//! One file per command.

pub mod evaluate;
pub mod generate;
pub mod train;
pub mod verify;
