//! The HTML report, opened in headless Chromium (Debian's `chromium`, installed by the test
//! command): it loads without console errors, and the screenshot shows the plots drawn: the
//! corrected (red) and raw (blue) percentile lines are there in pixels, not just as tags.

mod support;

use std::process::Command;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compare");

fn chromium() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

/// Pixels of `png` within `tol` of `rgb`.
fn pixels_like(png: &std::path::Path, rgb: (u8, u8, u8), tol: i32) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let step = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(step)
        .filter(|p| {
            (p[0] as i32 - rgb.0 as i32).abs() <= tol
                && (p[1] as i32 - rgb.1 as i32).abs() <= tol
                && (p[2] as i32 - rgb.2 as i32).abs() <= tol
        })
        .count()
}

#[test]
fn the_html_report_draws_its_plots_in_chromium_without_errors() {
    let Some(browser) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!("chromium is missing: the README's test command installs it");
        }
        eprintln!("SKIPPED: chromium is not installed (the README's test command installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("r.html");
    let out = support::squall()
        .args(["report", &format!("{FIXTURES}/base.json"), "--html"])
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(
        !text.contains("<script") && !text.contains("http://") && !text.contains("https://"),
        "self-contained"
    );

    let png = dir.path().join("r.png");
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
        .args(["--window-size=1200,1400", &format!("--screenshot={}", png.display())])
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("CONSOLE") && !log.contains("Uncaught"), "console messages: {log}");
    // the fixture has e2e and puback, each with a corrected (red) line; e2e has a raw (blue)
    // one. Seen: ~1,950 red and ~1,190 blue pixels; the dots and legends alone make ~450 red
    // and ~230 blue, so these bounds need the lines themselves drawn
    let red = pixels_like(&png, (0xd6, 0x27, 0x28), 40);
    let blue = pixels_like(&png, (0x1f, 0x77, 0xb4), 40);
    assert!(red > 1_200, "{red} red pixels: the corrected lines are not drawn");
    assert!(blue > 700, "{blue} blue pixels: the raw line is not drawn");
}
