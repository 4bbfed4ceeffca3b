//! `funksvd tune`'s parts that are not the command's flow: the search space and the trials'
//! configurations (`space`), the metric and its measurement (`metric`), ASHA and the search's
//! bookkeeping (`search`), rank 0 answering the groups (`coordinator`), the files a search
//! leaves (`record`) and its pictures (`charts`). `cmd::tune` puts them in order.

pub mod charts;
pub mod coordinator;
pub mod metric;
pub mod record;
pub mod search;
pub mod space;
