//! The follow-up work a [`Ticket`] carries around the item's write:
//! [`Guard::reserve`] just before it, [`Guard::confirm`] or
//! [`Guard::not_stored`] after, and [`Guard::stored`] for a fold. Together
//! they keep the dedupe history true to what reached a stream: nothing is
//! folded into an item that was never stored.

use std::time::Duration;

use super::dedupe;
use super::error::GuardError;
use super::{FoldEvent, Guard, Ticket};
use crate::submission::ReceiptId;
use crate::telemetry::events::emit;
use crate::telemetry::events::guard::{Collapsed, ConfirmFailed, ReservationGaveUp};

impl Guard {
    /// Called once the item is stored: counts a fold and returns the
    /// update the desk should get in `intake:events`.
    pub async fn stored(
        &self,
        ticket: &Ticket,
        id: ReceiptId,
    ) -> Result<Option<FoldEvent>, GuardError> {
        let Some((into, rule)) = &ticket.fold else {
            return Ok(None);
        };
        let settings = self.rules().dedupe.clone();
        let count = self.inner.dedupe.count_fold(*into, &settings).await?;
        Ok(Some(FoldEvent {
            into: *into,
            count,
            latest: id,
            rule: rule.clone(),
        }))
    }

    /// Reserves a desk-bound item just before its write, so a duplicate
    /// arriving at the same moment folds into it instead of becoming a
    /// second desk item. Returns the earlier stored item this one is a
    /// duplicate of, if one turned up since the check (the item is then
    /// folded: `(into, rule)`). While another duplicate's write is in
    /// flight it waits for that write (bounded by the reservation's
    /// lifetime); a reservation that outlives its writer (a gateway killed
    /// between reservation and write) expires and is taken over, never
    /// folded into.
    pub async fn reserve(
        &self,
        ticket: &mut Ticket,
        receipt: ReceiptId,
    ) -> Result<Option<(ReceiptId, String)>, GuardError> {
        let Some(customer) = ticket.customer.clone().filter(|_| ticket.remember) else {
            return Ok(None);
        };
        let settings = self.rules().dedupe.clone();
        let lifetime = self.inner.pending_lifetime;
        let deadline = std::time::Instant::now() + lifetime + Duration::from_secs(1);
        let mut pause = Duration::from_millis(5);
        loop {
            let found = self
                .inner
                .dedupe
                .reserve(
                    &customer,
                    ticket.fingerprint.as_ref(),
                    &settings,
                    receipt,
                    ticket.now_ms,
                    lifetime.as_millis() as u64,
                )
                .await?;
            match found {
                dedupe::Reserve::Reserved => {
                    ticket.reserved = Some(receipt);
                    return Ok(None);
                }
                dedupe::Reserve::Folded(into) => {
                    let rule = dedupe::Kind::Exact.rule().to_string();
                    ticket.fold = Some((into, rule.clone()));
                    emit(Collapsed { rule: &rule });
                    return Ok(Some((into, rule)));
                }
                dedupe::Reserve::Pending if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                dedupe::Reserve::Pending => {
                    // Its writer is stuck or gone and Redis has not expired
                    // it yet: store this item unreserved (at worst a second
                    // desk item, never a fold into nothing).
                    emit(ReservationGaveUp { receipt: &receipt });
                    return Ok(None);
                }
            }
        }
    }

    /// Called once the item is stored: its reservation becomes the stored
    /// item's, and it becomes the customer's latest. A failure is logged,
    /// not reported (the item is stored; a retry would store it twice):
    /// the reservation then expires and duplicates are not folded into it.
    pub async fn confirm(&self, ticket: &Ticket, receipt: ReceiptId) {
        let Some(customer) = ticket
            .customer
            .as_deref()
            .filter(|_| ticket.reserved == Some(receipt))
        else {
            return;
        };
        let settings = self.rules().dedupe.clone();
        // In the history of every identity the item carries: a duplicate
        // from any of them folds into it.
        let others = ticket.fingerprint.iter().flat_map(|fp| fp.others.iter());
        for customer in std::iter::once(customer).chain(others.map(String::as_str)) {
            if let Err(e) = self
                .inner
                .dedupe
                .confirm(
                    customer,
                    ticket.fingerprint.as_ref(),
                    &settings,
                    receipt,
                    ticket.now_ms,
                )
                .await
            {
                emit(ConfirmFailed {
                    receipt: &receipt,
                    error: &e,
                });
                return;
            }
        }
    }

    /// Called when the item was certainly not stored: its reservation is
    /// released, so a retry is not kept waiting for it. (An outcome that is
    /// not known, a timeout, leaves it to expire.)
    pub async fn not_stored(&self, ticket: &Ticket) {
        if let (Some(receipt), Some(customer)) = (ticket.reserved, &ticket.customer) {
            if let Err(e) = self
                .inner
                .dedupe
                .release(customer, ticket.fingerprint.as_ref(), receipt)
                .await
            {
                tracing::warn!(error = %e, "could not forget an item that was not stored");
            }
        }
    }
}
