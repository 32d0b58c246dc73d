//! Headless Chromium (Debian's `chromium` and `chromium-driver`) driven over WebDriver
//! by fantoccini, with a blocking face for the tests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::{free_port, wait_for, Process, Scratch};

/// One browser session; the driver and the browser stop when it is dropped.
pub struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    _driver: Process,
}

impl Browser {
    /// A fresh headless Chromium with an empty profile in `scratch`, `width` x `height`.
    pub fn start(scratch: &Scratch, width: u32, height: u32) -> Browser {
        Self::launch(scratch, width, height, None)
    }

    /// As on a phone: a `width` x `height` viewport (CSS pixels; headless windows are
    /// never narrower than 500) at twice the pixel density, with touch.
    pub fn start_phone(scratch: &Scratch, width: u32, height: u32) -> Browser {
        let metrics = json!({ "width": width, "height": height, "pixelRatio": 2, "touch": true });
        Self::launch(scratch, 500.max(width), height, Some(metrics))
    }

    fn launch(
        scratch: &Scratch,
        width: u32,
        height: u32,
        device_metrics: Option<Value>,
    ) -> Browser {
        let port = free_port();
        let driver = Process::spawn(
            &format!("chromedriver-{port}"),
            Command::new("chromedriver").arg(format!("--port={port}")),
            scratch.path(),
        );
        wait_for("chromedriver to listen", Duration::from_secs(20), || {
            crate::listening(port).then_some(())
        });
        let profile = scratch.path().join(format!("chromium-profile-{port}"));
        // The machine's network is closed: no background traffic, no first-run pages.
        let mut capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        if let Some(metrics) = device_metrics {
            capabilities["goog:chromeOptions"]["mobileEmulation"] =
                json!({ "deviceMetrics": metrics });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = runtime
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .unwrap_or_else(|e| panic!("starting headless chromium: {e}"));
        Browser {
            runtime,
            client: Some(client),
            _driver: driver,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    pub fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` in the page (`arguments` are its arguments) and returns its value.
    pub fn execute(&self, script: &str, arguments: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client().execute(script, arguments))
            .unwrap_or_else(|e| panic!("running a script in the page: {e}"))
    }

    /// The visible text of every element matching `css`.
    pub fn texts(&self, css: &str) -> Vec<String> {
        let value = self.execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => e.innerText);",
            vec![json!(css)],
        );
        serde_json::from_value(value).unwrap_or_default()
    }

    /// The computed CSS `property` of every element matching `css`.
    pub fn computed(&self, css: &str, property: &str) -> Vec<String> {
        let value = self.execute(
            "return [...document.querySelectorAll(arguments[0])].map(e => getComputedStyle(e)[arguments[1]]);",
            vec![json!(css), json!(property)],
        );
        serde_json::from_value(value).unwrap_or_default()
    }

    /// Clicks the first element matching `css`, scrolled to the middle of the window
    /// first (as a person would scroll to it; sticky headers cannot cover it there).
    pub fn click(&self, css: &str) {
        self.runtime.block_on(async {
            let element = self
                .client()
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            let argument = serde_json::to_value(&element).expect("an element as JSON");
            self.client()
                .execute(
                    "arguments[0].scrollIntoView({block: 'center', inline: 'center'});",
                    vec![argument],
                )
                .await
                .unwrap_or_else(|e| panic!("scrolling to {css}: {e}"));
            element
                .click()
                .await
                .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
        });
    }

    /// Types `text` into the first element matching `css` (after clearing it).
    pub fn fill(&self, css: &str, text: &str) {
        self.runtime.block_on(async {
            let field = self
                .client()
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            field
                .clear()
                .await
                .unwrap_or_else(|e| panic!("clearing {css}: {e}"));
            field
                .send_keys(text)
                .await
                .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
        });
    }

    /// Types `keys` into the first element matching `css` as they come (WebDriver key
    /// codes included: [`ENTER`] presses Enter there).
    pub fn type_keys(&self, css: &str, keys: &str) {
        self.runtime.block_on(async {
            self.client()
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"))
                .send_keys(keys)
                .await
                .unwrap_or_else(|e| panic!("typing into {css}: {e}"));
        });
    }

    /// Waits until `script` (run in the page with `arguments`) returns something other
    /// than `null`, `false`, `""` or `0`, and returns that.
    pub fn wait_until(&self, what: &str, script: &str, arguments: Vec<Value>) -> Value {
        wait_for(what, Duration::from_secs(30), || {
            let value = self.execute(script, arguments.clone());
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            truthy.then_some(value)
        })
    }

    /// The page's URL now.
    pub fn url(&self) -> String {
        self.runtime
            .block_on(self.client().current_url())
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// Waits until `check` (given the page's text) holds.
    pub fn wait_for_text(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        wait_for(what, Duration::from_secs(30), || {
            let text = self
                .execute(
                    "return document.body ? document.body.innerText : '';",
                    vec![],
                )
                .as_str()
                .unwrap_or_default()
                .to_owned();
            check(&text).then_some(text)
        })
    }

    /// Saves a PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("writing the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = self.runtime.block_on(client.close());
        }
    }
}

/// The WebDriver key code of Enter, for [`Browser::type_keys`].
pub const ENTER: &str = "\u{E007}";

/// Where a test saves a screenshot named `name`: `$SCREENSHOT_DIR` if set (the docs'
/// images are refreshed with `make screenshots`), else `target/screenshots/`.
pub fn screenshot_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/screenshots"));
    dir.join(name)
}
