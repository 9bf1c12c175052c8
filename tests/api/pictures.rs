//! pictures over HTTP: the original contract (multipart `file` in, the name as text out, the
//! bytes back), sniffing, limits and bombs, metadata stripped, deduplication, who may read,
//! conditional and range requests, the orphan sweep, and redirects to S3.

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::{DynamicImage, ImageFormat, RgbImage, RgbaImage};
use serde_json::{Value, json};

use crate::auth::{Tokens, login_as};
use crate::helpers::{Column, S3, TestApp, columns, env, error_code, targets, unique_phone};

const BOUNDARY: &str = "beep-test-boundary-7d9f";

/// A multipart/form-data body of `(field name, file name, bytes)` parts.
fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file_name, bytes) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match file_name {
            Some(file) => format!("form-data; name=\"{name}\"; filename=\"{file}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend_from_slice(
            format!(
                "Content-Disposition: {disposition}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn form_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

async fn upload_as(
    app: &TestApp,
    who: &Tokens,
    file_name: &str,
    bytes: &[u8],
) -> reqwest::Response {
    app.post("/pictures/upload")
        .bearer_auth(&who.access)
        .header("content-type", form_type())
        .body(form(&[("file", Some(file_name), bytes)]))
        .send()
        .await
        .unwrap()
}

/// Uploads and answers the stored name.
pub async fn uploaded(app: &TestApp, who: &Tokens, bytes: &[u8]) -> String {
    let response = upload_as(app, who, "photo.png", bytes).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

async fn fetch(app: &TestApp, who: &Tokens, name: &str) -> reqwest::Response {
    fetch_with(app, who, name, &[]).await
}

/// `GET /pictures/picture/{name_and_query}` with `headers`.
async fn fetch_with(
    app: &TestApp,
    who: &Tokens,
    name_and_query: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = app
        .client
        .get(app.url(&format!("/pictures/picture/{name_and_query}")))
        .bearer_auth(&who.access);
    for (header, value) in headers {
        request = request.header(*header, *value);
    }
    request.send().await.unwrap()
}

/// An opaque picture with detail (so JPEG has something to keep), as PNG.
pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 7 + u32::from(seed)) as u8,
            (y * 5) as u8,
            ((x ^ y) as u8).wrapping_add(seed),
        ])
    });
    encode(DynamicImage::ImageRgb8(image), ImageFormat::Png)
}

/// A picture no other test or run uploads: stored pictures are named by their content, and a
/// deployment keeps them (and who shows them) between runs.
fn unique_png() -> Vec<u8> {
    let noise = beep::platform::ids::random_hex128();
    let mut image = RgbImage::from_fn(50, 50, |x, y| image::Rgb([(x * 5) as u8, (y * 5) as u8, 0]));
    for (i, pair) in noise.as_bytes().chunks(2).enumerate() {
        let value = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        let x = u32::try_from(i).unwrap() * 3;
        for dy in 0..8 {
            image.put_pixel(x, dy, image::Rgb([value, 255 - value, value]));
        }
    }
    encode(DynamicImage::ImageRgb8(image), ImageFormat::Png)
}

fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn decoded(bytes: &[u8]) -> DynamicImage {
    image::load_from_memory(bytes).unwrap()
}

async fn user(app: &TestApp) -> Tokens {
    login_as(app, &unique_phone(), "phone-1").await
}

fn is_stored_name(name: &str, extension: &str) -> bool {
    name.strip_suffix(extension).is_some_and(|hash| {
        hash.len() == 32
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[tokio::test]
async fn upload_and_download_round_trip() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let alice = user(&app).await;
        let original = png(600, 400, 1);
        let name = uploaded(&app, &alice, &original).await;
        assert!(is_stored_name(&name, ".jpg"), "{name}");

        // The same picture again, asking for JSON: stored once, same name.
        let response = app
            .post("/pictures/upload")
            .bearer_auth(&alice.access)
            .header("accept", "application/json")
            .header("content-type", form_type())
            .body(form(&[("file", Some("again.png"), &original)]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({ "name": name })
        );

        let response = fetch(&app, &alice, &name).await;
        assert_eq!(response.status(), 200, "{column:?}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "image/jpeg");
        assert_eq!(headers["accept-ranges"], "bytes");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("private")
        );
        let etag = headers["etag"].to_str().unwrap().to_owned();
        let full = response.bytes().await.unwrap();
        let picture = decoded(&full);
        assert_eq!((picture.width(), picture.height()), (600, 400));

        let thumb = fetch_with(&app, &alice, &format!("{name}?size=thumb"), &[]).await;
        assert_eq!(thumb.status(), 200);
        let thumb_etag = thumb.headers()["etag"].to_str().unwrap().to_owned();
        assert_ne!(thumb_etag, etag);
        let thumb = decoded(&thumb.bytes().await.unwrap());
        assert_eq!((thumb.width(), thumb.height()), (256, 170));

        // Conditional: the ETag seen gives 304 and no body.
        let response = fetch_with(&app, &alice, &name, &[("if-none-match", etag.as_str())]).await;
        assert_eq!(response.status(), 304);
        assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
        assert!(response.bytes().await.unwrap().is_empty());

        // Ranges: the first ten bytes, the last ten, and one past the end.
        for (range, expected) in [
            ("bytes=0-9", full.slice(0..10)),
            ("bytes=-10", full.slice(full.len() - 10..)),
        ] {
            let response = fetch_with(&app, &alice, &name, &[("range", range)]).await;
            assert_eq!(response.status(), 206, "{range}");
            assert!(
                response.headers()["content-range"]
                    .to_str()
                    .unwrap()
                    .ends_with(&format!("/{}", full.len()))
            );
            assert_eq!(response.bytes().await.unwrap(), expected, "{range}");
        }
        let response = fetch_with(
            &app,
            &alice,
            &name,
            &[("range", format!("bytes={}-", full.len()).as_str())],
        )
        .await;
        assert_eq!(
            response.headers()["content-range"].to_str().unwrap(),
            format!("bytes */{}", full.len())
        );
        assert_eq!(error_code(response, 416).await, "range_not_satisfiable");

        // Unknown and malformed names are 404 JSON; a bad size is 400.
        let unknown = format!("{}.jpg", "0".repeat(32));
        for missing in [unknown.as_str(), "nodot", "a.b.c", "..%2f..%2fetc%2fpasswd"] {
            let response = fetch(&app, &alice, missing).await;
            // A proxy in front resolves the `..` before routing: pictures never sees the
            // traversal, and the proxy's own 404 answers.
            let expected = if app.in_process() || !missing.contains("..") {
                "picture_not_found"
            } else {
                "not_found"
            };
            assert_eq!(error_code(response, 404).await, expected, "{missing}");
        }
        let response = fetch_with(&app, &alice, &format!("{name}?size=huge"), &[]).await;
        assert_eq!(response.status(), 400);
        app.stop().await;
    }
}

#[tokio::test]
async fn transparent_pictures_stay_png() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let alice = user(&app).await;
        let image = RgbaImage::from_fn(64, 32, |x, _| image::Rgba([200, 10, 10, (x * 4) as u8]));
        let name = uploaded(
            &app,
            &alice,
            &encode(DynamicImage::ImageRgba8(image), ImageFormat::Png),
        )
        .await;
        assert!(is_stored_name(&name, ".png"), "{name}");
        let response = fetch(&app, &alice, &name).await;
        assert_eq!(response.headers()["content-type"], "image/png");
        let stored = decoded(&response.bytes().await.unwrap()).to_rgba8();
        assert_eq!(stored.get_pixel(0, 0).0[3], 0);
        assert_eq!(stored.get_pixel(63, 0).0[3], 252);
        // WebP and GIF are accepted too (stored as JPEG: they are opaque here).
        for format in [ImageFormat::WebP, ImageFormat::Gif] {
            let bytes = encode(
                DynamicImage::ImageRgba8(RgbaImage::from_pixel(8, 8, image::Rgba([1, 2, 3, 255]))),
                format,
            );
            let name = uploaded(&app, &alice, &bytes).await;
            assert!(is_stored_name(&name, ".jpg"), "{format:?}: {name}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn only_pictures_are_accepted_whatever_their_name() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let alice = user(&app).await;
        let picture = png(40, 30, 2);
        let mut truncated_png = picture.clone();
        truncated_png.truncate(picture.len() / 2);
        let mut html_first = b"<html><script>alert(1)</script></html>".to_vec();
        html_first.extend_from_slice(&picture);
        let refused: [(&str, &[u8], u16, &str); 6] = [
            (
                "notes.png",
                b"just some text, not a picture",
                415,
                "unsupported_picture",
            ),
            (
                "image.svg",
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
                415,
                "unsupported_picture",
            ),
            (
                "shell.jpg",
                b"<?php system($_GET['c']); ?>",
                415,
                "unsupported_picture",
            ),
            ("polyglot.png", &html_first, 415, "unsupported_picture"),
            ("half.png", &truncated_png, 422, "invalid_picture"),
            ("empty.png", b"", 415, "unsupported_picture"),
        ];
        for (file_name, bytes, status, code) in refused {
            let response = upload_as(&app, &alice, file_name, bytes).await;
            assert_eq!(error_code(response, status).await, code, "{file_name}");
        }

        // A picture carrying a script after its end is stored without it.
        let mut payload_after = picture.clone();
        payload_after.extend_from_slice(b"<?php system($_GET['c']); ?>");
        // File names without a dot, or with several, were a crash in the original.
        for file_name in ["noextension", "many.dots.in.name.png", "../../etc/passwd"] {
            let name = {
                let response = upload_as(&app, &alice, file_name, &payload_after).await;
                assert_eq!(response.status(), 200, "{file_name}");
                response.text().await.unwrap()
            };
            let stored = fetch(&app, &alice, &name).await.bytes().await.unwrap();
            assert!(!stored.windows(5).any(|w| w == b"<?php"), "payload kept");
        }

        // Forms that are not one `file` field.
        for (parts, code) in [
            (
                form(&[("picture", Some("a.png"), &picture)]),
                "invalid_upload",
            ),
            (
                form(&[
                    ("file", Some("a.png"), &picture),
                    ("file", Some("b.png"), &picture),
                ]),
                "invalid_upload",
            ),
            (b"--nope\r\ngarbage".to_vec(), "invalid_upload"),
            // Seventeen empty parts before the file: refused, however small.
            (
                {
                    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("pad", None, b""); 17];
                    parts.push(("file", Some("a.png"), &picture));
                    form(&parts)
                },
                "invalid_upload",
            ),
        ] {
            let response = app
                .post("/pictures/upload")
                .bearer_auth(&alice.access)
                .header("content-type", form_type())
                .body(parts)
                .send()
                .await
                .unwrap();
            assert_eq!(error_code(response, 400).await, code);
        }
        let response = app
            .post("/pictures/upload")
            .bearer_auth(&alice.access)
            .header("content-type", "image/png")
            .body(picture.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(response, 415).await, "not_multipart");

        // Anonymous: 401, for upload and download.
        let response = app
            .post("/pictures/upload")
            .header("content-type", form_type())
            .body(form(&[("file", Some("a.png"), &picture)]))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
        let name = uploaded(&app, &alice, &picture).await;
        assert_eq!(
            app.get(&format!("/pictures/picture/{name}")).await.status(),
            401
        );
        app.stop().await;
    }
}

/// A JPEG whose EXIF says: rotate 90° clockwise to view, taken at these GPS coordinates, by
/// this camera.
fn jpeg_with_exif(width: u32, height: u32) -> Vec<u8> {
    let plain = encode(
        DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        })),
        ImageFormat::Jpeg,
    );
    // TIFF, little-endian: IFD0 with Orientation = 6, Make, and a pointer to a GPS IFD
    // holding a latitude reference and latitude.
    let mut tiff: Vec<u8> = b"II*\0\x08\0\0\0".to_vec();
    let entry = |tag: u16, kind: u16, count: u32, value: u32| {
        let mut e = Vec::new();
        e.extend_from_slice(&tag.to_le_bytes());
        e.extend_from_slice(&kind.to_le_bytes());
        e.extend_from_slice(&count.to_le_bytes());
        e.extend_from_slice(&value.to_le_bytes());
        e
    };
    // IFD0 at 8: 3 entries (2 + 36 + 4 = 42 bytes) → data from 50.
    let make_at = 50u32;
    let gps_at = make_at + 8;
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend(entry(0x010f, 2, 8, make_at)); // Make
    tiff.extend(entry(0x0112, 3, 1, 6)); // Orientation
    tiff.extend(entry(0x8825, 4, 1, gps_at)); // GPS IFD
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff.extend_from_slice(b"SPYCAM1\0");
    // GPS IFD: 2 entries (2 + 24 + 4 = 30 bytes) → rationals after it.
    let rationals_at = gps_at + 30;
    tiff.extend_from_slice(&2u16.to_le_bytes());
    tiff.extend(entry(0x0001, 2, 2, u32::from_le_bytes(*b"N\0\0\0"))); // GPSLatitudeRef
    tiff.extend(entry(0x0002, 5, 3, rationals_at)); // GPSLatitude
    tiff.extend_from_slice(&0u32.to_le_bytes());
    for (numerator, denominator) in [(51u32, 1u32), (30, 1), (1234, 100)] {
        tiff.extend_from_slice(&numerator.to_le_bytes());
        tiff.extend_from_slice(&denominator.to_le_bytes());
    }
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut jpeg = plain[..2].to_vec(); // SOI
    jpeg.extend_from_slice(&[0xff, 0xe1]);
    jpeg.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
    jpeg.extend_from_slice(&app1);
    jpeg.extend_from_slice(&plain[2..]);
    jpeg
}

#[tokio::test]
async fn metadata_is_stripped_and_orientation_applied() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let alice = user(&app).await;
        let original = jpeg_with_exif(80, 40);
        // The input really carries it.
        assert!(original.windows(7).any(|w| w == b"SPYCAM1"));
        let name = uploaded(&app, &alice, &original).await;
        let stored = fetch(&app, &alice, &name).await.bytes().await.unwrap();
        for marker in [&b"Exif"[..], b"SPYCAM1", b"II*\0"] {
            assert!(
                !stored.windows(marker.len()).any(|w| w == marker),
                "{marker:?} kept"
            );
        }
        // Rotated a quarter turn clockwise: the left half (red) is now on top.
        let upright = decoded(&stored).to_rgb8();
        assert_eq!(upright.dimensions(), (40, 80));
        let top = upright.get_pixel(20, 10).0;
        let bottom = upright.get_pixel(20, 70).0;
        assert!(top[0] > 200 && top[2] < 60, "top is {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom is {bottom:?}");
        app.stop().await;
    }
}

/// Retries `read` until it answers `status` (caches drop answers when core's events arrive).
async fn eventually_status(app: &TestApp, who: &Tokens, name: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = fetch(app, who, name).await.status().as_u16();
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "still {got}, not {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn set_profile_pic(app: &TestApp, who: &Tokens, name: &str) -> reqwest::Response {
    app.client
        .patch(app.url("/core/user"))
        .bearer_auth(&who.access)
        .json(&json!({ "profile_pic": name }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn who_may_read_follows_who_shows_the_picture() {
    for column in targets() {
        let app = TestApp::spawn(column).await;
        let alice = user(&app).await;
        let bob = user(&app).await;
        let carol = user(&app).await;

        // Only its uploader, until someone shows it.
        let avatar = uploaded(&app, &alice, &unique_png()).await;
        assert_eq!(fetch(&app, &alice, &avatar).await.status(), 200);
        assert_eq!(
            error_code(fetch(&app, &bob, &avatar).await, 403).await,
            "not_allowed"
        );

        // A profile picture: every signed-in user; no longer once replaced.
        assert_eq!(set_profile_pic(&app, &alice, &avatar).await.status(), 200);
        assert_eq!(fetch(&app, &bob, &avatar).await.status(), 200, "{column:?}");
        assert_eq!(set_profile_pic(&app, &alice, "").await.status(), 200);
        eventually_status(&app, &bob, &avatar, 403).await;
        assert_eq!(fetch(&app, &alice, &avatar).await.status(), 200);

        // A conversation's picture: its members only.
        let cover = uploaded(&app, &alice, &unique_png()).await;
        let response = app
            .post("/core/user/conversation")
            .bearer_auth(&alice.access)
            .json(&json!({ "title": "team", "picture": cover }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let conversation = response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let added = app
            .post(&format!("/core/user/conversation/{conversation}/member"))
            .bearer_auth(&alice.access)
            .json(&json!({ "id": carol.user_id }))
            .send()
            .await
            .unwrap();
        assert_eq!(added.status(), 200);
        assert_eq!(fetch(&app, &carol, &cover).await.status(), 200);
        assert_eq!(fetch(&app, &bob, &cover).await.status(), 403);
        // Carol leaves: no longer hers to see.
        let left = app
            .client
            .delete(app.url(&format!(
                "/core/user/conversation/{conversation}/member/{}",
                carol.user_id
            )))
            .bearer_auth(&carol.access)
            .send()
            .await
            .unwrap();
        assert_eq!(left.status(), 200);
        eventually_status(&app, &carol, &cover, 403).await;

        // core keeps only names pictures stored.
        let never_stored = format!("{}.jpg", "ab".repeat(16));
        for bad in [never_stored.as_str(), "p.png", "https://evil.example/x.jpg"] {
            let response = set_profile_pic(&app, &bob, bad).await;
            assert_eq!(error_code(response, 400).await, "invalid_profile", "{bad}");
            let response = app
                .client
                .patch(app.url(&format!("/core/user/conversation/{conversation}")))
                .bearer_auth(&alice.access)
                .json(&json!({ "picture": bad }))
                .send()
                .await
                .unwrap();
            assert_eq!(
                error_code(response, 400).await,
                "invalid_conversation",
                "{bad}"
            );
        }
        // Carol kept the name after leaving, but cannot make it everyone's by showing it.
        let response = set_profile_pic(&app, &carol, &cover).await;
        assert_eq!(error_code(response, 400).await, "invalid_profile");
        assert_eq!(fetch(&app, &bob, &cover).await.status(), 403);
        // Its uploader may; then anyone may show what everyone is shown.
        assert_eq!(set_profile_pic(&app, &alice, &cover).await.status(), 200);
        assert_eq!(set_profile_pic(&app, &bob, &cover).await.status(), 200);
        assert_eq!(fetch(&app, &carol, &cover).await.status(), 200);

        // The picture of many conversations: Bob, a member of one of them, is shown it.
        let banner = uploaded(&app, &alice, &unique_png()).await;
        for n in 0..10 {
            let response = app
                .post("/core/user/conversation")
                .bearer_auth(&alice.access)
                .json(&json!({ "title": format!("room {n}"), "picture": banner }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            if n == 9 {
                let id = response.json::<Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let added = app
                    .post(&format!("/core/user/conversation/{id}/member"))
                    .bearer_auth(&alice.access)
                    .json(&json!({ "id": bob.user_id }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(added.status(), 200);
            }
        }
        assert_eq!(fetch(&app, &bob, &banner).await.status(), 200);
        assert_eq!(fetch(&app, &carol, &banner).await.status(), 403);
        app.stop().await;
    }
}

#[tokio::test]
async fn pictures_nobody_shows_are_swept_after_the_grace_period() {
    for column in columns() {
        let app = TestApp::spawn_with(
            column,
            |config| {
                config.pictures.orphan_grace_secs = 120;
                config.pictures.gc_interval_secs = 1;
            },
            Vec::new(),
        )
        .await;
        let alice = user(&app).await;
        let unused = uploaded(&app, &alice, &png(30, 30, 5)).await;
        let shown = uploaded(&app, &alice, &png(30, 30, 6)).await;
        assert_eq!(set_profile_pic(&app, &alice, &shown).await.status(), 200);
        let key = |name: &str| format!("pictures/{}/{name}", &name[..2]);
        assert!(
            app.platform()
                .blobs
                .get(&key(&unused))
                .await
                .unwrap()
                .is_some()
        );

        // Within the grace period nothing goes; past it, the unused one does.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(fetch(&app, &alice, &unused).await.status(), 200);
        app.clock().advance(Duration::from_secs(121));
        eventually_status(&app, &alice, &unused, 404).await;
        assert_eq!(
            app.platform().blobs.get(&key(&unused)).await.unwrap(),
            None,
            "{column:?}"
        );
        assert_eq!(fetch(&app, &alice, &shown).await.status(), 200);

        // Once no longer shown, it is swept a grace period later.
        assert_eq!(set_profile_pic(&app, &alice, "").await.status(), 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(fetch(&app, &alice, &shown).await.status(), 200);
        app.clock().advance(Duration::from_secs(121));
        eventually_status(&app, &alice, &shown, 404).await;
        assert_eq!(app.platform().blobs.get(&key(&shown)).await.unwrap(), None);
        // And it can no longer be shown.
        let response = set_profile_pic(&app, &alice, &shown).await;
        assert_eq!(error_code(response, 400).await, "invalid_profile");
        app.stop().await;
    }
}

#[tokio::test]
async fn redirect_mode_sends_clients_to_a_presigned_url() {
    if env(S3).is_none() {
        return;
    }
    let app = TestApp::spawn_with(
        Column::Real,
        |config| config.pictures.serve = beep::config::PictureServing::Redirect,
        Vec::new(),
    )
    .await;
    let alice = user(&app).await;
    let bob = user(&app).await;
    let name = uploaded(&app, &alice, &png(300, 200, 7)).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(app.url(&format!("/pictures/picture/{name}?size=thumb")))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&env(S3).unwrap()), "{location}");
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The bytes come from S3, not from Beep.
    let thumb = reqwest::get(&location).await.unwrap();
    assert_eq!(thumb.status(), 200);
    let thumb = decoded(&thumb.bytes().await.unwrap());
    assert_eq!((thumb.width(), thumb.height()), (256, 170));
    // The read rules still apply before any URL is handed out.
    let response = no_redirects
        .get(app.url(&format!("/pictures/picture/{name}")))
        .bearer_auth(&bob.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    app.stop().await;
}

/// A PNG that declares `width`×`height` and carries almost nothing.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA
    chunk(&mut png, b"IHDR", &header);
    // A zlib stream of a few zero bytes: a bomb would inflate forever from here.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A JPEG whose frame header declares `width`×`height` (the scan is a real 16×16 one).
fn jpeg_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut jpeg = encode(
        DynamicImage::ImageRgb8(RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9]))),
        ImageFormat::Jpeg,
    );
    let sof = jpeg.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_refused_without_using_memory() {
    use crate::served::Served;
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(dir.path(), &[("BEEP_AUTH__DEV_BYPASS", "true")]);
    let base = format!("http://127.0.0.1:{}", served.port);
    let client = reqwest::Client::new();
    let (token, _) = crate::login::token_and_user(&base, &unique_phone(), "phone").await;
    let upload = |bytes: Vec<u8>| {
        client
            .post(format!("{base}/pictures/upload"))
            .bearer_auth(&token)
            .header("content-type", form_type())
            .body(form(&[("file", Some("bomb.png"), &bytes)]))
            .send()
    };
    // Warm up: one real upload, so the baseline includes a normal one.
    assert_eq!(upload(png(800, 600, 8)).await.unwrap().status(), 200);
    let before = served.peak_rss();

    for (bomb, what) in [
        // 50,000² RGBA would be 10 GB.
        (png_declaring(50_000, 50_000), "PNG, 50000x50000"),
        // Within the side limit, past the area limit: 11,000² = 121 MP.
        (png_declaring(11_000, 11_000), "PNG, 11000x11000"),
        (jpeg_declaring(60_000, 60_000), "JPEG, 60000x60000"),
        (jpeg_declaring(12_000, 12_000), "JPEG, 12000x12000"),
    ] {
        let response = upload(bomb).await.unwrap();
        assert_eq!(
            error_code(response, 422).await,
            "picture_too_large",
            "{what}"
        );
    }

    // A body past the limit, streamed without a length: refused once the limit is crossed,
    // never buffered whole.
    let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
    let prefix = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\r\n"
    );
    let body = futures_util::stream::iter((0..64).map(move |i| {
        Ok::<_, std::io::Error>(if i == 0 {
            bytes::Bytes::from(prefix.clone())
        } else {
            chunk.clone()
        })
    }));
    let response = client
        .post(format!("{base}/pictures/upload"))
        .bearer_auth(&token)
        .header("content-type", form_type())
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    // The server may answer and close before the client finishes sending.
    if let Ok(response) = response {
        assert_eq!(error_code(response, 413).await, "payload_too_large");
    }
    // A declared length past the limit: refused before a byte of the body is sent.
    let port = served.port;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "POST /pictures/upload HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: {}\r\nContent-Length: 50000000\r\n\r\n",
            form_type()
        )
        .unwrap();
        let mut answer = vec![0u8; 4096];
        let read = stream.read(&mut answer).unwrap();
        String::from_utf8_lossy(&answer[..read]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    let after = served.peak_rss();
    let grown = after.saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "peak RSS grew by {} MB refusing bombs",
        grown >> 20
    );
    served.stop();
}
