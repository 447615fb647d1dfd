//! The web viewer at `/`, in a real browser: Debian's Chromium, headless, driven over the
//! DevTools protocol (chromiumoxide), against a real nats-server, a resolver and a gateway.
//!
//! Each test saves screenshots under the cargo target's temp directory and prints their paths.
//! `IMGFETCH_CHROMIUM` names the browser binary (default `/usr/bin/chromium`, which
//! `scripts/setup.sh` installs); without one the tests fail rather than pass unseen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::js_protocol::runtime::EventExceptionThrown;
use chromiumoxide::page::ScreenshotParams;
use chromiumoxide::Page;
use futures::StreamExt;
use imgfetch_common::store::StoreSpec;
use imgfetch_gateway::archive::ArchiveConfig;
use imgfetch_gateway::auth::Tokens;
use imgfetch_tests::fake::{answer_image, fake_resolver, take_request};
use imgfetch_tests::nats::NatsServer;
use imgfetch_tests::pipeline::{sample_resolver, Gateway};
use imgfetch_tests::{eventually, init_logs, sample, write_tokens_file};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// How long the page may take to reach a state.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// A headless Chromium with its own profile directory, closed and reaped on drop.
struct Chromium {
    browser: Browser,
    handler: tokio::task::JoinHandle<()>,
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn launch() -> Chromium {
        let executable = std::env::var_os("IMGFETCH_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            executable.exists(),
            "no browser at {} (install Debian's chromium with ./scripts/setup.sh, or set \
             IMGFETCH_CHROMIUM)",
            executable.display()
        );
        let profile = tempfile::tempdir().expect("profile dir");
        // This machine has no internet: without these, Chromium keeps trying to reach Google's
        // services in the background (docs of the machine: background networking, sync, QUIC).
        let config = BrowserConfig::builder()
            .chrome_executable(&executable)
            .new_headless_mode()
            .no_sandbox()
            .user_data_dir(profile.path())
            .window_size(1280, 900)
            .viewport(None)
            .args([
                "--disable-gpu",
                "--disable-quic",
                "--disable-component-update",
                "--disable-extensions",
                "--no-default-browser-check",
            ])
            .launch_timeout(Duration::from_secs(30))
            .request_timeout(Duration::from_secs(30))
            .build()
            .expect("browser config");
        let (browser, mut handler) = Browser::launch(config).await.expect("launch chromium");
        let handler = tokio::spawn(async move { while handler.next().await.is_some() {} });
        Chromium {
            browser,
            handler,
            _profile: profile,
        }
    }

    /// A new tab at `url`, with uncaught script exceptions collected in the returned list.
    async fn open(&self, url: &str) -> (Page, Arc<Mutex<Vec<String>>>) {
        let page = self.browser.new_page("about:blank").await.expect("new tab");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let mut thrown = page
            .event_listener::<EventExceptionThrown>()
            .await
            .expect("exception listener");
        let sink = errors.clone();
        tokio::spawn(async move {
            while let Some(event) = thrown.next().await {
                let details = &event.exception_details;
                let text = details
                    .exception
                    .as_ref()
                    .and_then(|e| e.description.clone())
                    .unwrap_or_else(|| details.text.clone());
                sink.lock().unwrap().push(text);
            }
        });
        page.goto(url).await.expect("navigate");
        (page, errors)
    }

    async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
    }
}

/// Evaluates `expression` (which must produce a JSON string) in the page.
async fn eval<T: DeserializeOwned>(page: &Page, expression: &str) -> T {
    let json: String = page
        .evaluate(format!("JSON.stringify({expression})"))
        .await
        .unwrap_or_else(|e| panic!("evaluating {expression}: {e}"))
        .into_value()
        .expect("a string");
    serde_json::from_str(&json).expect("JSON from the page")
}

/// Every result card: key, state, error code, the visible texts and the rendered image's size.
const CARDS: &str = r#"Array.from(document.querySelectorAll('#results .card')).map(c => ({
    key: c.dataset.key,
    state: c.dataset.state,
    code: c.dataset.code || null,
    badge: c.querySelector('.badge').textContent,
    detail: c.querySelector('.detail').textContent,
    visible: c.getBoundingClientRect().height > 0,
    width: c.querySelector('img').naturalWidth,
    shown: !c.querySelector('img').hidden,
    alt: c.querySelector('img').alt,
    info: Object.fromEntries(Array.from(c.querySelectorAll('.info dt')).map(dt => [dt.textContent, dt.nextElementSibling.textContent])),
}))"#;

/// Waits until the page has `count` cards and none is still queued or fetching.
async fn settled_cards(page: &Page, count: usize) -> Vec<Value> {
    eventually(&format!("{count} cards to settle"), PAGE_WAIT, || async {
        let cards: Vec<Value> = eval(page, CARDS).await;
        let done = cards.len() == count
            && cards
                .iter()
                .all(|c| c["state"] == "shown" || c["state"] == "error");
        done.then_some(cards)
    })
    .await
}

fn card<'a>(cards: &'a [Value], key: &str) -> &'a Value {
    cards
        .iter()
        .find(|c| c["key"] == key)
        .unwrap_or_else(|| panic!("no card for {key} in {cards:#?}"))
}

/// Saves a full-page screenshot under the target's temp directory and checks it is a PNG.
async fn screenshot(page: &Page, name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("viewer");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(name);
    let png = page
        .save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path)
        .await
        .expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot, not {} bytes",
        png.len()
    );
    println!("screenshot: {}", path.display());
    path
}

async fn connection_state(page: &Page) -> String {
    eval(page, "document.getElementById('connection').dataset.state").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_link_shows_images_with_their_information_and_errors_as_errors() {
    init_logs();
    let nats = NatsServer::start();
    let _harbor = sample_resolver(&nats.url(), "harbor").await;
    let archive = tempfile::tempdir().unwrap();
    let root = archive.path().to_path_buf();
    let gateway = Gateway::start(&nats.url(), |c| {
        c.archive = Some(ArchiveConfig::new(StoreSpec::File { root: root.clone() }));
    })
    .await;

    // The page and its files, as plain HTTP: embedded, typed, and locked to this origin.
    let page_response = reqwest::get(gateway.http("/")).await.unwrap();
    assert_eq!(page_response.status(), 200);
    let csp = page_response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert!(page_response.text().await.unwrap().contains("/viewer.js"));
    for (path, kind) in [
        ("/viewer.js", "text/javascript"),
        ("/viewer.css", "text/css"),
    ] {
        let r = reqwest::get(gateway.http(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    let networks: Value = reqwest::get(gateway.http("/v1/networks"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        networks,
        serde_json::json!({"networks": [{"name": "harbor", "served": true}]})
    );

    let chromium = Chromium::launch().await;
    let keys = "quay-east.jpg,cranes/crane-07.jpg,no/such.jpg,../etc/passwd";
    let (page, exceptions) = chromium
        .open(&gateway.http(&format!("/?network=harbor&keys={keys}")))
        .await;

    let cards = settled_cards(&page, 4).await;
    for key in ["quay-east.jpg", "cranes/crane-07.jpg"] {
        let c = card(&cards, key);
        assert_eq!(c["state"], "shown", "{c:#?}");
        assert_eq!(c["badge"], "shown");
        assert!(c["width"].as_u64().unwrap() > 0, "rendered: {c:#?}");
        assert_eq!(c["shown"], true);
        assert!(!c["alt"].as_str().unwrap().is_empty(), "alt text: {c:#?}");
        let archived = c["info"]["Archive"].as_str().unwrap();
        assert!(
            root.join(archived).is_file(),
            "the card names the archive copy {archived:?}"
        );
        assert!(
            c["info"]["Size"].as_str().unwrap().contains(" px"),
            "{c:#?}"
        );
    }
    let quay = card(&cards, "quay-east.jpg");
    assert!(quay["info"]["Place"]
        .as_str()
        .unwrap()
        .contains("East Quay"));
    assert_eq!(quay["info"]["Device"], "Quay camera 3");
    assert!(quay["alt"].as_str().unwrap().contains("East Quay"));

    let missing = card(&cards, "no/such.jpg");
    assert_eq!(missing["state"], "error");
    assert_eq!(missing["code"], "not_found");
    assert_eq!(missing["badge"], "error");
    assert!(missing["detail"]
        .as_str()
        .unwrap()
        .starts_with("not_found: "));
    assert_eq!(missing["shown"], false);
    assert_eq!(missing["visible"], true);
    let hostile = card(&cards, "../etc/passwd");
    assert_eq!(hostile["state"], "error");
    assert_eq!(hostile["code"], "invalid_request");

    // The form was filled from the link, and the link still says what is shown.
    let form: Value = eval(
        &page,
        "({network: document.getElementById('network').value, \
           keys: document.getElementById('keys').value, \
           search: location.search, \
           options: Array.from(document.getElementById('network').options).map(o => o.value), \
           summary: document.getElementById('summary').textContent})",
    )
    .await;
    assert_eq!(form["network"], "harbor");
    assert_eq!(
        form["keys"],
        "quay-east.jpg\ncranes/crane-07.jpg\nno/such.jpg\n../etc/passwd"
    );
    assert!(form["search"].as_str().unwrap().contains("network=harbor"));
    assert_eq!(form["options"], serde_json::json!(["harbor"]));
    eventually("the summary to count", PAGE_WAIT, || async {
        let s: String = eval(&page, "document.getElementById('summary').textContent").await;
        (s == "4 requested: 2 shown, 2 failed. All done.").then_some(())
    })
    .await;

    // Plain accessibility: a language, a label for every control, a text for every image.
    let a11y: Value = eval(
        &page,
        "({lang: document.documentElement.lang, \
           unlabelled: Array.from(document.querySelectorAll('input, select, textarea')).filter(e => e.labels.length === 0).map(e => e.id), \
           live: document.querySelectorAll('[aria-live]').length})",
    )
    .await;
    assert_eq!(a11y["lang"], "en");
    assert_eq!(a11y["unlabelled"], serde_json::json!([]));
    assert!(a11y["live"].as_u64().unwrap() >= 2);
    screenshot(&page, "viewer-desktop.png").await;

    // On a phone: nothing wider than the screen.
    page.execute(
        SetDeviceMetricsOverrideParams::builder()
            .width(390)
            .height(844)
            .device_scale_factor(2.0)
            .mobile(true)
            .build()
            .unwrap(),
    )
    .await
    .expect("phone metrics");
    let overflow: Value = eval(
        &page,
        "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})",
    )
    .await;
    assert!(
        overflow["scroll"].as_u64().unwrap() <= overflow["inner"].as_u64().unwrap(),
        "the page scrolls sideways on a phone: {overflow}"
    );
    screenshot(&page, "viewer-phone.png").await;

    let thrown = exceptions.lock().unwrap().clone();
    assert!(thrown.is_empty(), "the page threw: {thrown:#?}");
    chromium.close().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reconnects_by_itself_and_sends_what_was_asked_while_the_gateway_was_down() {
    init_logs();
    let nats = NatsServer::start();
    let _harbor = sample_resolver(&nats.url(), "harbor").await;
    let gateway = Gateway::start(&nats.url(), |_| {}).await;
    let addr = gateway.addr;

    let chromium = Chromium::launch().await;
    let (page, exceptions) = chromium.open(&gateway.http("/")).await;
    eventually("the page to connect", PAGE_WAIT, || async {
        (connection_state(&page).await == "connected").then_some(())
    })
    .await;
    eventually("the network list", PAGE_WAIT, || async {
        let options: Vec<String> = eval(
            &page,
            "Array.from(document.getElementById('network').options).map(o => o.value)",
        )
        .await;
        (options == ["harbor"]).then_some(())
    })
    .await;

    gateway.stop().await;
    eventually("the page to see the gateway gone", PAGE_WAIT, || async {
        (connection_state(&page).await == "reconnecting").then_some(())
    })
    .await;

    // Asked for while the gateway is down, through the form as a person would.
    let keys = page.find_element("#keys").await.expect("keys field");
    keys.click().await.expect("focus keys");
    keys.type_str("quay-east.jpg, cranes/crane-07.jpg")
        .await
        .expect("type keys");
    page.find_element("#fetch")
        .await
        .expect("fetch button")
        .click()
        .await
        .expect("click fetch");
    let waiting: Vec<Value> = eval(&page, CARDS).await;
    assert_eq!(waiting.len(), 2);
    assert!(
        waiting.iter().all(|c| c["state"] == "queued"),
        "{waiting:#?}"
    );

    let again = Gateway::start_at(addr, &nats.url(), |_| {}).await;
    let cards = settled_cards(&page, 2).await;
    for c in &cards {
        assert_eq!(c["state"], "shown", "{c:#?}");
        assert!(c["width"].as_u64().unwrap() > 0);
    }
    assert_eq!(connection_state(&page).await, "connected");
    screenshot(&page, "viewer-reconnected.png").await;

    let thrown = exceptions.lock().unwrap().clone();
    assert!(thrown.is_empty(), "the page threw: {thrown:#?}");
    chromium.close().await;
    again.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_accepted_before_its_gateway_died_arrives_after_the_page_reconnects() {
    init_logs();
    let nats = NatsServer::start();
    let (fake, consumer) = fake_resolver(&nats.url(), "slow").await;
    let one = Gateway::start(&nats.url(), |c| c.instance = "gw-one".into()).await;
    let addr = one.addr;

    let chromium = Chromium::launch().await;
    let (page, exceptions) = chromium.open(&one.http("/?network=slow&keys=a.jpg")).await;
    // The stand-in resolver takes the request and holds it: accepted, not answered.
    let (id, _callback, _held) = take_request(&consumer).await;
    eventually("the card to say fetching", PAGE_WAIT, || async {
        let cards: Vec<Value> = eval(&page, CARDS).await;
        (cards.len() == 1 && cards[0]["state"] == "fetching").then_some(())
    })
    .await;

    // The gateway dies with the request in flight; another comes back at the same address.
    one.kill().await;
    eventually("the page to see the gateway gone", PAGE_WAIT, || async {
        (connection_state(&page).await != "connected").then_some(())
    })
    .await;
    let two = Gateway::start_at(addr, &nats.url(), |c| c.instance = "gw-two".into()).await;

    // The page asks for its request by id; the new gateway finds the owner gone, takes the
    // request over and queues it again, and the answer reaches the page.
    let (retry_id, retry_callback, _retried) = take_request(&consumer).await;
    assert_eq!(retry_id, format!("{id}.retry.1"));
    let bytes = sample("harbor/quay-east.jpg");
    answer_image(&fake, retry_callback, &id, "slow", "a.jpg", bytes.clone()).await;
    let cards = settled_cards(&page, 1).await;
    assert_eq!(cards[0]["state"], "shown", "{cards:#?}");
    assert!(cards[0]["width"].as_u64().unwrap() > 0);
    assert_eq!(
        cards[0]["info"]["Size"]
            .as_str()
            .unwrap()
            .split(" · ")
            .next(),
        Some("5.4 KiB")
    );
    assert_eq!(bytes.len(), 5543);

    let thrown = exceptions.lock().unwrap().clone();
    assert!(thrown.is_empty(), "the page threw: {thrown:#?}");
    chromium.close().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_page_asks_for_one_and_shows_only_its_networks() {
    const TOKEN: &str = "viewer-harbor-5c9d2e71";
    init_logs();
    let nats = NatsServer::start();
    let _harbor = sample_resolver(&nats.url(), "harbor").await;
    let _plant = sample_resolver(&nats.url(), "plant").await;
    let secrets = tempfile::tempdir().unwrap();
    let tokens_file = secrets.path().join("tokens.toml");
    write_tokens_file(&tokens_file, "harbor-viewer", TOKEN, &["harbor"]);
    let tokens = Tokens::load(&tokens_file).unwrap();
    let gateway = Gateway::start(&nats.url(), |c| c.clients.tokens = Some(tokens)).await;

    let chromium = Chromium::launch().await;
    let (page, exceptions) = chromium
        .open(&gateway.http("/?network=harbor&keys=quay-east.jpg"))
        .await;
    // Refused at the upgrade and at /v1/networks: the page says a token is needed.
    eventually("the page to ask for a token", PAGE_WAIT, || async {
        let state: Value = eval(
            &page,
            "({connection: document.getElementById('connection').dataset.state, \
               error: document.getElementById('form-error').textContent, \
               open: document.getElementById('auth').open})",
        )
        .await;
        (state["connection"] == "refused"
            && state["error"].as_str().unwrap().contains("bearer token")
            && state["open"] == true)
            .then_some(())
    })
    .await;
    let waiting: Vec<Value> = eval(&page, CARDS).await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["state"], "queued");

    // The token, typed in; the request the link asked for then goes through.
    let field = page.find_element("#token").await.expect("token field");
    field.click().await.expect("focus token");
    field.type_str(TOKEN).await.expect("type token");
    page.find_element("#keys")
        .await
        .expect("keys field")
        .click()
        .await
        .expect("leave the token field");
    let cards = settled_cards(&page, 1).await;
    assert_eq!(cards[0]["state"], "shown", "{cards:#?}");
    assert!(cards[0]["width"].as_u64().unwrap() > 0);
    let seen: Value = eval(
        &page,
        "({href: location.href, \
           share: document.getElementById('share').href, \
           stored: sessionStorage.getItem('imgfetch-token'), \
           options: Array.from(document.getElementById('network').options).map(o => o.value)})",
    )
    .await;
    assert_eq!(
        seen["options"],
        serde_json::json!(["harbor"]),
        "only the token's networks"
    );
    assert_eq!(seen["stored"], TOKEN);
    for field in ["href", "share"] {
        assert!(
            !seen[field].as_str().unwrap().contains(TOKEN),
            "the token leaked into {field}: {seen}"
        );
    }

    // A link to a network the token may not fetch: the card says forbidden.
    page.goto(gateway.http("/?network=plant&keys=line-3/overview.png"))
        .await
        .expect("navigate");
    let cards = settled_cards(&page, 1).await;
    assert_eq!(cards[0]["state"], "error");
    assert_eq!(cards[0]["code"], "forbidden");

    let thrown = exceptions.lock().unwrap().clone();
    assert!(thrown.is_empty(), "the page threw: {thrown:#?}");
    chromium.close().await;
    gateway.stop().await;
}
