//! The shop pages of deploy/examples/ in a real browser: headless Chromium
//! (Debian's `chromium` and `chromium-driver`, installed by deploy/dev/test)
//! driven over WebDriver loads them from a static server of the test's own
//! (another origin than the gateway's, so CORS is real), fills the contact
//! form with a file upload, submits it, and the receipt the page shows must
//! name a desk item with those fields and that attachment. A JSON post
//! from the page's origin goes through Chromium's CORS preflight, and a
//! post over a rate rule's quota must be explained on the page with its
//! Retry-After.
//!
//! The static server plays the shop: it points the pages at the test
//! gateway and, like a shop's server rendering its page, embeds a fresh
//! form token in the plain page; the script page fetches its own. The
//! form requires tokens, so a page that failed to carry one would leave
//! its post in `suppressed`, not on the desk.

mod support;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use serde_json::Value;
use support::{clamd::dev_clamd, free_port, redis_url, Entry, Gateway};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const FORM_SECRET: &str = "browser-form-secret-0123456789abcdef";
/// How long a page may take to do what the test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_pages_post_forms_with_uploads_from_a_real_browser() {
    let browser = Browser::start().await;
    let shop = ShopServer::bind().await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("form-secret");
    std::fs::write(&secret, FORM_SECRET).unwrap();
    // Three posts from this browser pass; the fourth is refused with 429,
    // so the script page has to read Retry-After across origins.
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("30-forms.toml"),
        "[[rule]]\nname = \"form-per-browser\"\nmatch = { channel = \"form\" }\n\
         key = [\"ip\"]\nrate = \"1/h\"\nburst = 3\naction = \"reject\"\n",
    )
    .unwrap();
    let origin = shop.origin.clone();
    let gw = Gateway::start_edited(
        "browser_forms",
        &redis_url(),
        &format!(
            // Appended to the `contact` form table, then sections of its own.
            // token_min_age 0: the browser fills the form faster than a person.
            "token = \"required\"\ntoken_min_age = \"0s\"\n\n\
             [forms_security]\nsecret = {{ file = \"{}\" }}\n\n\
             [scan]\nclamd = \"tcp://{}\"\n\n\
             [rules]\ndir = \"{}\"\n",
            secret.display(),
            dev_clamd(),
            rules.path().display()
        ),
        |text| {
            text.replace(
                r#"allowed_origins = ["https://shop.test"]"#,
                &format!(r#"allowed_origins = ["{origin}"]"#),
            )
            .replace(
                r#"redirect = "https://shop.test/thanks""#,
                &format!(r#"redirect = "{origin}/thanks.html""#),
            )
        },
    )
    .await;
    let shop = shop.serve(gw.url.clone());

    // The plain HTML form: the browser posts multipart, the gateway
    // answers 303 to `_next`, the thank-you page shows the receipt.
    let upload = Upload::new(
        "invoice-4711.txt",
        b"Invoice 4711: 2 x blue shoes, size 42\n",
    );
    let page = &browser.client;
    page.goto(&format!("{}/contact.html", shop.origin))
        .await
        .unwrap();
    fill(
        page,
        "ann@example.com",
        "Ann Example",
        "Where is my order 4711?",
        &upload,
    )
    .await;
    page.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let receipt = page
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::XPath(
            "//strong[@id='receipt' and string-length(normalize-space(text())) > 0]",
        ))
        .await
        .expect("the thank-you page shows a receipt after the plain form's post")
        .text()
        .await
        .unwrap();
    let url = page.current_url().await.unwrap();
    assert_eq!(
        url.path(),
        "/thanks.html",
        "the browser lands on the shop's thank-you page: {url}"
    );
    assert!(
        url.query()
            .is_some_and(|q| q.contains(&format!("receipt={receipt}"))),
        "the thank-you URL carries the receipt shown: {url}"
    );
    let item = desk_item(&gw, &receipt).await;
    assert_item(
        &item,
        &receipt,
        "ann@example.com",
        "Ann Example",
        "Where is my order 4711?",
        &upload,
        &shop.origin,
    );

    // The script variant: fetch() with Accept: application/json; the
    // receipt appears on the same page.
    let upload = Upload::new("photo-of-parcel.txt", b"(a photo of a squashed parcel)\n");
    page.goto(&format!("{}/contact-script.html", shop.origin))
        .await
        .unwrap();
    page.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css("form[data-token-ready=true]"))
        .await
        .expect("the script page fetches its form token when it loads");
    let token = page
        .find(Locator::Css("input[name=_token]"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        !token.is_empty(),
        "the script page got a token from GET /v1/forms/contact/token across origins"
    );
    fill(
        page,
        "bob@example.net",
        "Bob Example",
        "The parcel arrived squashed.",
        &upload,
    )
    .await;
    page.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = page
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(
            "#status[data-kind=ok], #status[data-kind=error]",
        ))
        .await
        .expect("the script page reports the outcome of its post");
    let said = status.text().await.unwrap();
    let receipt = status
        .attr("data-receipt")
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the script page shows no receipt; it said: {said}"));
    assert!(
        said.contains(&receipt),
        "the receipt is shown to the customer: {said}"
    );
    assert_eq!(
        page.current_url().await.unwrap().path(),
        "/contact-script.html",
        "the script variant stays on its page"
    );
    let item = desk_item(&gw, &receipt).await;
    assert_item(
        &item,
        &receipt,
        "bob@example.net",
        "Bob Example",
        "The parcel arrived squashed.",
        &upload,
        &shop.origin,
    );

    // A JSON post is not a "simple" cross-origin request: Chromium sends
    // a CORS preflight first, and posts only if the gateway allows it.
    let answer = page
        .execute_async(
            r#"
            const done = arguments[arguments.length - 1];
            const action = document.getElementById("contact").action;
            fetch(action + "/token")
              .then((r) => r.json())
              .then((t) => fetch(action, {
                method: "POST",
                headers: { "Content-Type": "application/json", "Accept": "application/json" },
                body: JSON.stringify({ email: "carol@example.org", message: "Sent as JSON.", _token: t.token }),
              }))
              .then((r) => r.json().then((body) => done({ status: r.status, body })))
              .catch((e) => done({ error: String(e) }));
            "#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        answer["status"], 202,
        "a preflighted JSON post from the shop's origin is accepted: {answer}"
    );
    let receipt = answer["body"]["id"].as_str().unwrap();
    let env = desk_item(&gw, receipt).await.envelope();
    assert_eq!(env["customer"]["email"], "carol@example.org");
    assert_eq!(env["fields"]["message"], "Sent as JSON.");

    // A fourth post is over the rule's quota: the page says when to retry
    // (it read Retry-After across origins) and nothing reaches the desk.
    let upload = Upload::new("again.txt", b"once more\n");
    page.goto(&format!("{}/contact-script.html", shop.origin))
        .await
        .unwrap();
    page.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css("form[data-token-ready=true]"))
        .await
        .unwrap();
    fill(page, "bob@example.net", "Bob Example", "Any news?", &upload).await;
    page.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let said = page
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Css(
            "#status[data-kind=ok], #status[data-kind=error]",
        ))
        .await
        .expect("the script page reports the refused post")
        .text()
        .await
        .unwrap();
    if !(said.contains("Please try again in about") && said.contains("minutes")) {
        let kinds: Vec<_> = gw
            .entries("suppressed")
            .await
            .iter()
            .map(|e| format!("{}: {}", e.field("kind"), e.field("reason")))
            .collect();
        panic!(
            "a 429 is explained with its Retry-After (1/h quota, burst 3): {said}; \
             desk holds {} items, suppressed {kinds:?}",
            gw.entries("desk").await.len()
        );
    }
    assert_eq!(
        gw.entries("desk").await.len(),
        3,
        "the refused post is not on the desk"
    );

    let suppressed = gw.entries("suppressed").await;
    let kinds: Vec<_> = suppressed.iter().map(|e| e.field("kind")).collect();
    assert_eq!(
        kinds,
        ["rejected"],
        "only the refused post is kept aside; no browser post was taken for a bot: {:?}",
        suppressed
            .iter()
            .map(|e| e.field("reason"))
            .collect::<Vec<_>>()
    );
    browser.stop().await;
    gw.stop().await;
}

/// Types into the contact form's fields and picks the file to upload.
async fn fill(page: &Client, email: &str, name: &str, message: &str, upload: &Upload) {
    for (selector, text) in [
        ("input[name=email]", email),
        ("input[name=name]", name),
        ("textarea[name=message]", message),
    ] {
        page.wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("the page has {selector}: {e}"))
            .send_keys(text)
            .await
            .unwrap();
    }
    // A file input takes the file's path as its keys.
    page.find(Locator::Css("input[type=file][name=attachment]"))
        .await
        .unwrap()
        .send_keys(upload.path.to_str().unwrap())
        .await
        .unwrap();
}

/// The desk entry with this receipt id.
async fn desk_item(gw: &Gateway, receipt: &str) -> Entry {
    let desk = gw.entries("desk").await;
    desk.iter()
        .find(|e| e.field("id") == receipt)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the receipt {receipt} the browser showed names no desk item; desk holds {:?}",
                desk.iter().map(|e| e.field("id")).collect::<Vec<_>>()
            )
        })
}

fn assert_item(
    item: &Entry,
    receipt: &str,
    email: &str,
    name: &str,
    message: &str,
    upload: &Upload,
    origin: &str,
) {
    let env = item.envelope();
    assert_eq!(env["id"], receipt);
    assert_eq!(env["channel"], "form");
    assert_eq!(env["source"]["form"], "contact");
    assert_eq!(
        env["source"]["origin"], origin,
        "the browser said where it posted from"
    );
    assert_eq!(env["customer"]["email"], email);
    assert_eq!(env["customer"]["name"], name);
    assert_eq!(env["fields"]["message"], message);
    let fields = env["fields"].as_object().unwrap();
    for reserved in ["_gotcha", "_next", "_token"] {
        assert!(
            !fields.contains_key(reserved),
            "reserved field {reserved} is not kept: {fields:?}"
        );
    }
    let attachments = env["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "one upload: {attachments:?}");
    let a = &attachments[0];
    assert_eq!(a["filename"], upload.name);
    assert_eq!(a["size"], upload.data.len());
    let content = base64::engine::general_purpose::STANDARD
        .decode(a["content_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(content, upload.data, "the upload arrives byte for byte");
    assert_eq!(
        env["scan"]["status"], "clean",
        "the upload was scanned: {}",
        env["scan"]
    );
}

/// A file the browser uploads.
struct Upload {
    name: &'static str,
    data: Vec<u8>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Upload {
    fn new(name: &'static str, data: &[u8]) -> Upload {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        Upload {
            name,
            data: data.to_vec(),
            path,
            _dir: dir,
        }
    }
}

/// chromedriver with a headless Chromium session.
struct Browser {
    client: Client,
    driver: Child,
}

impl Browser {
    async fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: this test drives Debian's headless Chromium; \
                 install it with `apt-get install chromium chromium-driver` \
                 (deploy/dev/test installs {package} when missing)"
            );
        }
        let port = free_port();
        // A process group of its own: Chromium, which chromedriver starts,
        // joins it, so a failed test can end both (see `Drop`).
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        // Wait for chromedriver to listen; it prints nothing we need.
        let deadline = Instant::now() + PAGE_WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.try_wait() {
                panic!("chromedriver exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-background-networking",
                    "--no-proxy-server",
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| {
                let _ = driver.kill();
                panic!("chromedriver starts a headless Chromium session: {e}")
            });
        Browser { client, driver }
    }

    /// Closes the session (chromedriver ends Chromium); `Drop` ends the rest.
    async fn stop(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A failed test never closes its session: end the whole group
        // (chromedriver and every Chromium process), not chromedriver alone,
        // which would leave Chromium running.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}

/// The shop's web server: serves deploy/examples/ on an origin of its own.
struct ShopServer {
    listener: tokio::net::TcpListener,
    origin: String,
}

struct Shop {
    origin: String,
    _task: tokio::task::JoinHandle<()>,
}

impl ShopServer {
    async fn bind() -> ShopServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        ShopServer { listener, origin }
    }

    /// Serves the pages, pointed at `gateway`, until the test ends.
    fn serve(self, gateway: String) -> Shop {
        let origin = self.origin.clone();
        let site = Arc::new(Site {
            dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples"),
            gateway,
            origin: origin.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = self.listener.accept().await else {
                    return;
                };
                let site = site.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let site = site.clone();
                        async move { Ok::<_, std::convert::Infallible>(site.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Shop {
            origin,
            _task: task,
        }
    }
}

struct Site {
    dir: PathBuf,
    gateway: String,
    origin: String,
}

impl Site {
    async fn answer(
        &self,
        request: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let name = request.uri().path().trim_start_matches('/');
        let content_type = match name.rsplit('.').next() {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            _ => "application/octet-stream",
        };
        let file = (!name.contains("..") && !name.contains('/'))
            .then(|| std::fs::read_to_string(self.dir.join(name)).ok())
            .flatten();
        let Some(text) = file else {
            let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"not found")));
            *response.status_mut() = hyper::StatusCode::NOT_FOUND;
            return response;
        };
        // The pages name the dev gateway and the dev shop origin
        // (deploy/dev/intake.toml); here they are the test's.
        let mut text = text
            .replace("http://127.0.0.1:8080", &self.gateway)
            .replace("http://127.0.0.1:8000", &self.origin);
        if name == "contact.html" {
            // What a shop's server does for a page without JavaScript:
            // fetch a token while rendering and embed it.
            let token = self.token().await;
            let empty = r#"name="_token" value="""#;
            assert!(
                text.contains(empty),
                "contact.html has an empty _token input"
            );
            text = text.replace(empty, &format!(r#"name="_token" value="{token}""#));
        }
        let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    }

    async fn token(&self) -> String {
        let response = support::client()
            .get(format!("{}/v1/forms/contact/token", self.gateway))
            .send()
            .await
            .expect("the shop's server reaches the gateway");
        assert_eq!(response.status(), 200, "GET /v1/forms/contact/token");
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().expect("a token").to_string()
    }
}
