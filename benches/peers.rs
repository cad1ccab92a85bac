//! The peers benchmark (issue 7): us against bare spawn, `JoinSet`, `TaskTracker`,
//! `CancellationToken`, async-scoped and `FuturesUnordered`.

fn main() {}
