//! A Spin app that publishes through `spin:mqtt@3.0.0`, which thaw does not offer: thaw's
//! tests check that its deploy is refused with a message naming the interface.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use spin_sdk::mqtt::{Connection, Qos};

#[http_service]
async fn handle(_req: Request) -> impl IntoResponse {
    match Connection::open("mqtt://127.0.0.1:1883?client_id=thaw", "", "", 30).await {
        Ok(queue) => match queue
            .publish("t", b"hello".to_vec(), Qos::AtLeastOnce)
            .await
        {
            Ok(()) => "published".to_owned(),
            Err(e) => format!("error: {e}"),
        },
        Err(e) => format!("error: {e}"),
    }
}
