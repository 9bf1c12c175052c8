//! pictures figures, in release mode (`cargo bench --bench pictures [-- upload|memory|download]`):
//! - `upload`: a 2 MB photo-like JPEG through the whole pipeline (sniff, decode, scale, turn,
//!   re-encode, thumbnail, hash, store), p50/p99 over sequential uploads of distinct photos,
//!   against `beep serve` as an operator runs it;
//! - `memory`: peak resident memory of a fresh `beep serve` with K uploads at once, per
//!   concurrent upload, above its idle peak;
//! - `download`: thumbnails per second through `GET /pictures/picture/{name}?size=thumb`
//!   (signed in, access checked) against the same bytes from a bare actix route in the same
//!   app, same run, same client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use beep::app::{self, Hosting};
use beep::platform::http::Caller;
use beep::platform::service::{Routes, Service};
use bytes::Bytes;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageEncoder as _, RgbImage};

#[allow(dead_code)]
#[path = "common/load.rs"]
mod load;
use load::{CONNECTIONS, PIPELINE, compare, wanted};

#[allow(dead_code)]
#[path = "../tests/common/login.rs"]
mod login;

#[allow(dead_code)]
#[path = "../tests/common/served.rs"]
mod served;
use served::Served;

const UPLOADS: usize = 30;
const ROUNDS: usize = 15;
const ROUND: Duration = Duration::from_secs(1);
const BOUNDARY: &str = "beep-bench-boundary";

fn main() {
    beep::platform::install_crypto_provider();
    let runtime = load::client_runtime();
    println!(
        "# beep pictures bench ({} cores)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    runtime.block_on(async {
        if wanted("upload") {
            upload().await;
        }
        if wanted("memory") {
            memory().await;
        }
        if wanted("download") {
            download().await;
        }
    });
}

/// A 3000×2000 photo-like JPEG (smooth light, texture, sensor noise) of about 2 MB; `seed`
/// makes each one distinct, so no upload is deduplicated.
fn photo(seed: u32) -> Vec<u8> {
    let mut noise = seed.wrapping_mul(2_654_435_761) | 1;
    let image = RgbImage::from_fn(3000, 2000, |x, y| {
        noise ^= noise << 13;
        noise ^= noise >> 17;
        noise ^= noise << 5;
        let grain = (noise % 24) as i32 - 12;
        let sky = 255 - (y * 160 / 2000) as i32;
        let texture = (((x / 7 + y / 5 + seed) % 17) * 4) as i32;
        let channel = |base: i32| (base + texture + grain).clamp(0, 255) as u8;
        image::Rgb([channel(sky / 2), channel(sky * 2 / 3), channel(sky)])
    });
    let mut out = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut out, 92)
        .write_image(image.as_raw(), 3000, 2000, image::ExtendedColorType::Rgb8)
        .unwrap();
    out.into_inner()
}

fn form(bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Uploads `photo`: how long it took, and the stored name.
async fn post_upload(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    photo: &[u8],
) -> (Duration, String) {
    let started = Instant::now();
    let response = client
        .post(format!("{base}/pictures/upload"))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(form(photo))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let name = response.text().await.unwrap();
    (started.elapsed(), name)
}

fn serve(dir: &tempfile::TempDir) -> Served {
    Served::start(
        dir.path(),
        &[
            ("BEEP_AUTH__DEV_BYPASS", "true"),
            ("BEEP_AUTH__DEV_BYPASS_IN_RELEASE", "true"),
            ("BEEP_TELEMETRY__LOG_FILTER", "warn"),
        ],
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

async fn upload() {
    let photos: Vec<Vec<u8>> = (0..=UPLOADS as u32).map(photo).collect();
    let size = photos[0].len();
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&dir);
    let base = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    let (token, _) = login::token_and_user(&base, &login::phone(1), "bench").await;
    post_upload(&client, &base, &token, &photos[UPLOADS]).await;
    let mut times = Vec::with_capacity(UPLOADS);
    for photo in &photos[..UPLOADS] {
        times.push(post_upload(&client, &base, &token, photo).await.0);
    }
    times.sort();
    println!(
        "upload of a 3000x2000 photo-like JPEG ({:.2} MB), {UPLOADS} distinct photos one after another, \
         `beep serve` (release, local blobs, SQLite):",
        size as f64 / 1e6
    );
    println!(
        "  p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms, max {:.0} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    served.stop();
}

async fn memory() {
    let photos: Vec<Vec<u8>> = (100..108).map(photo).collect();
    println!(
        "peak RSS of a fresh `beep serve` (release, SQLite, local blobs) with K uploads of a {:.2} MB \
         photo at once, above its idle peak (signed in, nothing uploaded):",
        photos[0].len() as f64 / 1e6
    );
    for concurrent in [1usize, 2, 4, 8] {
        let dir = tempfile::tempdir().unwrap();
        let served = serve(&dir);
        let base = format!("http://127.0.0.1:{}", served.port);
        let client = reqwest::Client::new();
        let (token, _) = login::token_and_user(&base, &login::phone(1), "bench").await;
        let idle = served.peak_rss();
        let uploads = photos[..concurrent]
            .iter()
            .map(|photo| post_upload(&client, &base, &token, photo));
        futures_util::future::join_all(uploads).await;
        let grown = served.peak_rss().saturating_sub(idle);
        println!(
            "  K = {concurrent}: idle {:.0} MB, +{:.0} MB, {:.1} MB per upload",
            idle as f64 / 1e6,
            grown as f64 / 1e6,
            grown as f64 / 1e6 / concurrent as f64
        );
        served.stop();
    }
}

/// The reference: the thumbnail's bytes from memory, on a bare route of the same app.
struct BareThumb(Bytes);

impl Service for BareThumb {
    fn name(&self) -> &'static str {
        "bare-thumb"
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "a bench-only route, not part of the API document"
    )]
    fn routes(&self, cfg: &mut Routes<'_>) {
        let bytes = self.0.clone();
        // Bench-only: mounted, not documented.
        cfg.map(|cfg| {
            cfg.route(
                "/bench/bare-thumb",
                web::get().to({
                    let bytes = bytes.clone();
                    move || {
                        let bytes = bytes.clone();
                        async move { HttpResponse::Ok().content_type("image/jpeg").body(bytes) }
                    }
                }),
            )
            // The same behind token verification: what signing in alone costs.
            .route(
                "/bench/signed-in-thumb",
                web::get().to({
                    let bytes = bytes.clone();
                    move |_caller: Caller| {
                        let bytes = bytes.clone();
                        async move { HttpResponse::Ok().content_type("image/jpeg").body(bytes) }
                    }
                }),
            )
            // And with a path parameter, as a picture's route has: what routing by name costs.
            .route(
                "/bench/named-thumb/{name}",
                web::get().to(move |_caller: Caller, _name: web::Path<String>| {
                    let bytes = bytes.clone();
                    async move { HttpResponse::Ok().content_type("image/jpeg").body(bytes) }
                }),
            )
        });
    }
}

async fn download() {
    // The thumbnail to serve, made by a first app on a scratch directory.
    let dir = tempfile::tempdir().unwrap();
    let mut config = load::app_config(dir.path());
    login::allow_bypass(&mut config);
    let photo = photo(7);
    let running = app::start(config.clone(), beep::services::COMPILED, Hosting::default())
        .await
        .unwrap();
    let (addr, handle) = (running.addr(), running.handle());
    tokio::spawn(running.run());
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let token = login::access_token(&base, 1).await;
    let (_, name) = post_upload(&client, &base, &token, &photo).await;
    let path = format!("/pictures/picture/{name}?size=thumb");
    let thumb = client
        .get(format!("{base}{path}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    handle.stop(true).await;

    // The same data directory again, with the bare route beside it.
    let running = app::start(
        config,
        beep::services::COMPILED,
        Hosting {
            extra_services: vec![Arc::new(BareThumb(thumb.clone())) as Arc<dyn Service>],
            ..Hosting::default()
        },
    )
    .await
    .unwrap();
    let (addr, handle) = (running.addr(), running.handle());
    tokio::spawn(running.run());
    let base = format!("http://{addr}");
    let token = login::access_token(&base, 1).await;
    let bare = client
        .get(format!("{base}/bench/bare-thumb"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bare, thumb);
    let get = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    let comparison = compare(
        addr,
        get("/bench/bare-thumb").as_bytes(),
        get(&path).as_bytes(),
        ROUNDS,
        ROUND,
    )
    .await;
    println!(
        "thumbnail downloads ({} bytes), 1 server worker, {CONNECTIONS} connections x {PIPELINE} pipelined, \
         {ROUNDS} rounds of {ROUND:?}:",
        thumb.len()
    );
    comparison.print("bare actix route", "GET /pictures/picture?size=thumb");
    let comparison = compare(
        addr,
        get("/bench/bare-thumb").as_bytes(),
        get("/bench/signed-in-thumb").as_bytes(),
        ROUNDS,
        ROUND,
    )
    .await;
    println!("the same bytes behind token verification only, same run:");
    comparison.print("bare actix route", "bare route + Caller");
    let comparison = compare(
        addr,
        get("/bench/bare-thumb").as_bytes(),
        get(&format!("/bench/named-thumb/{name}")).as_bytes(),
        ROUNDS,
        ROUND,
    )
    .await;
    println!("the same bytes behind token verification and a {{name}} path parameter, same run:");
    comparison.print("bare actix route", "bare route + Caller + {name}");
    handle.stop(true).await;
}
