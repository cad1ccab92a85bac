//! A guide to cancellation with tokio-nursery.
