//! TLS set-up and its failures: what a client without the right certificate gets.

mod common;

use common::{start_over, Transport, WAIT};
use rtc_client::{Client, ConnectOptions, Error};

#[tokio::test]
async fn a_tls_url_needs_a_ca_or_insecure() {
    let b = start_over(Transport::Tls, |_| {}).await;
    assert!(b.url.starts_with("tls://"), "{}", b.url);
    let err = Client::connect(&b.url).await.unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("ca_file")),
        "{err}"
    );

    let insecure = ConnectOptions {
        insecure: true,
        ..Default::default()
    };
    let c = Client::connect_with(&b.url, insecure).await.unwrap();
    c.publish("t", "over tls without verification")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_rejected() {
    let b = start_over(Transport::Tls, |_| {}).await;
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let path = b.dir.path().join("other.pem");
    std::fs::write(&path, other.cert.pem()).unwrap();
    let options = ConnectOptions {
        ca_file: Some(path),
        ..Default::default()
    };
    let err = Client::connect_with(&b.url, options).await.unwrap_err();
    assert!(
        matches!(&err, Error::Connect { reason, .. } if reason.contains("TLS handshake failed")),
        "{err}"
    );
}

#[tokio::test]
async fn plain_tcp_to_a_tls_listener_fails_promptly() {
    let b = start_over(Transport::Tls, |_| {}).await;
    let plain = b.url.replace("tls://", "tcp://");
    let result = tokio::time::timeout(WAIT, Client::connect(&plain))
        .await
        .expect("fails, does not hang");
    assert!(result.is_err());
    // The broker keeps serving TLS clients.
    b.connect().await.publish("t", "fine").await.unwrap();
}
