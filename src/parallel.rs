//! Parallel borrowing scopes (SPEC B2): children that borrow from the caller's stack and run
//! on the multi-thread runtime's workers.
