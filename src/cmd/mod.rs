//! One file per command.

pub mod evaluate;
pub mod generate;
pub mod recommend;
pub mod serve;
pub mod train;
pub mod tune;
pub mod verify;
