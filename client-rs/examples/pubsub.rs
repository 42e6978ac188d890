//! Subscribe, publish, receive: `cargo run -p rtc-client --example pubsub [URL]`
//! with a broker running (`cargo run --release --bin rtc-broker`).

use rtc_client::{Client, PublishMessage};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), rtc_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:7400".to_string());
    let client = Client::connect(&url).await?;
    let mut sub = client.subscribe("example.>").await?;
    for i in 1..=3 {
        let msg = PublishMessage::new(format!("example.n{i}"), format!("message {i}"))
            .header("n", i.to_string());
        client.publish_message(msg).await?;
    }
    for _ in 0..3 {
        let Some(m) = sub.next().await else { break };
        println!(
            "{} {} {:?}",
            m.topic,
            String::from_utf8_lossy(&m.payload),
            m.headers
        );
    }
    client.close().await;
    Ok(())
}
