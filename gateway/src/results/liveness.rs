//! Liveness: every gateway answers on `imgfetch.gateway.<instance>` with its incarnation, and a
//! gateway asks another's before it takes over that one's pending requests.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use imgfetch_common::message::Liveness;
use imgfetch_common::protocol;
use tokio_util::sync::CancellationToken;

use super::{Results, ResultsError, LIVENESS_TIMEOUT};

/// Answers on `instance`'s liveness subject until `stop` fires: other gateways take over this
/// gateway's pending requests once it stops answering, so this runs supervised. Ends early
/// (an error) when the subscription ends or an answer cannot be sent within `timeout`.
pub async fn answer_liveness(
    client: async_nats::Client,
    instance: String,
    incarnation: String,
    timeout: Duration,
    stop: CancellationToken,
) -> Result<(), ResultsError> {
    let mut pings = tokio::time::timeout(
        timeout,
        client.subscribe(protocol::gateway_subject(&instance)),
    )
    .await
    .map_err(|_| ResultsError::LivenessTimeout(timeout))?
    .map_err(ResultsError::Liveness)?;
    let name = Bytes::from(instance);
    loop {
        let ping = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            ping = pings.next() => ping,
        };
        let Some(ping) = ping else {
            return Err(ResultsError::LivenessEnded);
        };
        if let Some(reply) = ping.reply {
            let headers = Liveness {
                incarnation: incarnation.clone(),
            }
            .to_headers();
            let answer = client.publish_with_headers(reply, headers, name.clone());
            tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| ResultsError::LivenessTimeout(timeout))?
                .map_err(ResultsError::LivenessAnswer)?;
        }
    }
}

impl Results {
    /// Whether gateway `owner`, in its process `incarnation`, answers on its liveness subject.
    /// "No responders" counts as gone, and so does an answer from another incarnation (a new
    /// process under the old name); a slow answer is not proof of death, nor an answer without
    /// an incarnation (an older gateway) or to a record that names none.
    pub(crate) async fn alive(&self, owner: &str, incarnation: &str) -> bool {
        let ask = self
            .client
            .request(protocol::gateway_subject(owner), Bytes::new());
        match tokio::time::timeout(LIVENESS_TIMEOUT, ask).await {
            Ok(Err(err)) => err.kind() != async_nats::RequestErrorKind::NoResponders,
            Ok(Ok(answer)) => match Liveness::from_headers(answer.headers.as_ref()) {
                Some(Liveness {
                    incarnation: answered,
                }) if !incarnation.is_empty() => answered == incarnation,
                _ => true,
            },
            Err(_) => true,
        }
    }
}
