//! Redeploying under load: no request fails, each is answered by the old or the new version.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use thaw_test_functions as wasm;

use crate::support::{TestServer, client, route};

#[tokio::test(flavor = "multi_thread")]
async fn redeploy_under_load_drops_nothing() {
    let server = TestServer::start_with(&["--instance-slots", "64"]);
    server.deploy("swap", wasm::HELLO, route("/swap")).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (hello, echo) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, hello, echo) = (stop.clone(), hello.clone(), echo.clone());
        let url = format!("{}/swap", server.url);
        clients.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .get(&url)
                    .send()
                    .await
                    .expect("request failed during redeploy");
                assert_eq!(r.status(), 200, "a request failed during redeploy");
                if r.headers().contains_key("x-echo-method") {
                    assert_eq!(
                        r.text().await.unwrap(),
                        "",
                        "echo answers GET with an empty body"
                    );
                    echo.fetch_add(1, Ordering::Relaxed);
                } else {
                    assert_eq!(
                        r.text().await.unwrap(),
                        "Hello, world!\n",
                        "neither version"
                    );
                    hello.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    // Alternate the two versions under the same name and route.
    for i in 0..6 {
        let wasm = if i % 2 == 0 { wasm::ECHO } else { wasm::HELLO };
        server.deploy("swap", wasm, route("/swap")).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("a client saw a failure");
    }
    let (hello, echo) = (hello.load(Ordering::Relaxed), echo.load(Ordering::Relaxed));
    assert!(
        hello > 0 && echo > 0,
        "both versions answered: hello {hello}, echo {echo}"
    );
    assert_eq!(server.admin().get("swap").await.unwrap()["generation"], 7);
}
