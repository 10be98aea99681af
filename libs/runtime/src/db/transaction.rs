//! Committing a transaction whose caller may stop waiting.
//!
//! A call cancelled while its `COMMIT` is in flight (its deadline passed,
//! its client went away) drops the transaction, and sqlx then queues a
//! `ROLLBACK` behind the `COMMIT`: the transaction commits all the same,
//! the `ROLLBACK` finds none (Postgres warns "there is no transaction in
//! progress") and the caller never learns which happened. [`commit`] runs
//! the `COMMIT` on its own task instead, so once started it completes and
//! the connection goes back to the pool clean, whether or not anyone still
//! waits for the answer. A retry with the same idempotency key then finds
//! what was committed.

use sqlx::{Postgres, Transaction};

/// Commits `tx` on its own task: completed even if the caller is dropped.
pub async fn commit(tx: Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
    match tokio::spawn(tx.commit()).await {
        Ok(committed) => committed,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        // Only a runtime shutting down cancels the task: the connection is
        // gone with it, and so is the transaction.
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}
