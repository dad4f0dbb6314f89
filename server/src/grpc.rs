//! The `api.protobuf.pod` gRPC service.

use std::{sync::Arc, time::Duration};

use proto::{InfoRequest, InfoResponse, Pod};
use tonic::{
    Request, Response, Status,
    metadata::{MetadataKey, MetadataValue},
};

use crate::{conn::ConnInfo, echo::parse_echo_header};

pub struct PodService {
    pod_name: Arc<str>,
    max_delay: Duration,
}

impl PodService {
    pub fn new(pod_name: Arc<str>, max_delay: Duration) -> Self {
        Self {
            pod_name,
            max_delay,
        }
    }
}

#[tonic::async_trait]
impl Pod for PodService {
    async fn get_info(
        &self,
        request: Request<InfoRequest>,
    ) -> Result<Response<InfoResponse>, Status> {
        let (peer, connection_requests) = match request.extensions().get::<ConnInfo>() {
            Some(conn) => (conn.peer_text.to_string(), conn.next_request()),
            // Only when served over a transport without our connection tracking.
            None => (String::new(), 0),
        };
        let echo = echo_metadata(request.metadata())?;

        let delay = Duration::from_millis(u64::from(request.get_ref().delay_ms));
        if delay > self.max_delay {
            return Err(Status::invalid_argument(format!(
                "delay_ms {} exceeds the server's limit of {} ms",
                delay.as_millis(),
                self.max_delay.as_millis()
            )));
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }

        let mut response = Response::new(InfoResponse {
            name: self.pod_name.to_string(),
            peer,
            connection_requests,
        });
        for (key, value) in echo {
            response.metadata_mut().append(key, value);
        }
        Ok(response)
    }
}

type EchoPair = (
    MetadataKey<tonic::metadata::Ascii>,
    MetadataValue<tonic::metadata::Ascii>,
);

fn echo_metadata(metadata: &tonic::metadata::MetadataMap) -> Result<Vec<EchoPair>, Status> {
    let mut pairs = Vec::new();
    for raw in metadata.get_all(proto::ECHO_RESPONSE_HEADER) {
        let (name, value) = parse_echo_header(raw.as_bytes()).map_err(Status::invalid_argument)?;
        let key = MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("invalid metadata key {name:?}")))?;
        let value = value
            .parse()
            .map_err(|_| Status::invalid_argument(format!("invalid metadata value for {name}")))?;
        pairs.push((key, value));
    }
    Ok(pairs)
}
