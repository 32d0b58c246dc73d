//! The storefront: the `storefront` component's files and headers over real HTTP, and
//! the page in headless Chromium buying from the whole shop (real `redis-server`,
//! devmail, the runner with the three compiled components, the trace viewer).
//!
//! Two tests save the screenshots the README shows (`make screenshots` refreshes them):
//! the product list with a cart, and a confirmed order.

use std::process::Command;
use std::time::Duration;

use e2e::browser::{screenshot_path, Browser, ENTER};
use e2e::*;
use serde_json::{json, Value};

const PRINT: &str = "LIMITED-PRINT";
const MUG: &str = "SPIN-MUG";
const STICKERS: &str = "STICKER-PACK";
const INVALID_CARD: &str = "4242 4242 4242 4241";

struct Shop {
    runner: Runner,
    mail: DevMail,
    viewer: TraceViewer,
    redis: Redis,
    scratch: Scratch,
}

fn start(test: &str) -> Shop {
    start_with(test, RunnerOptions::default())
}

/// The shop as `make up` runs it, traced to a trace viewer the orders link to.
fn start_with(test: &str, mut options: RunnerOptions<'_>) -> Shop {
    let scratch = Scratch::new(test);
    let redis = Redis::start(&scratch);
    let viewer = TraceViewer::start(&scratch);
    let mail = DevMail::start(&scratch);
    options.otlp_endpoint = Some(viewer.endpoint());
    options
        .extra_variables
        .push(("trace_viewer_url".into(), viewer.base_url.clone()));
    let runs_fulfilment =
        options.components.is_empty() || options.components.contains(&"fulfilment");
    let runner = Runner::start(&scratch, &redis, &mail, options);
    if runs_fulfilment {
        redis.wait_for_subscribers(CHANNEL, 1);
    }
    Shop {
        runner,
        mail,
        viewer,
        redis,
        scratch,
    }
}

impl Shop {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.runner.base_url)
    }

    /// The shop's page, once its products (with their stock) are on it.
    fn open(&self, width: u32, height: u32) -> Browser {
        let browser = Browser::start(&self.scratch, width, height);
        self.show_products(&browser);
        browser
    }

    fn open_on_phone(&self, width: u32, height: u32) -> Browser {
        let browser = Browser::start_phone(&self.scratch, width, height);
        self.show_products(&browser);
        browser
    }

    fn show_products(&self, browser: &Browser) {
        browser.goto(&self.url("/"));
        let (_, catalogue) = self.runner.get("/api/products");
        let count = catalogue["products"].as_array().unwrap().len();
        browser.wait_until(
            "the products and their stock",
            "return document.querySelectorAll('#products .product .stock:not(:empty)').length === arguments[0];",
            vec![json!(count)],
        );
    }

    fn emails_for(&self, order_id: &str) -> usize {
        self.mail
            .messages()
            .iter()
            .filter(|m| m["subject"].as_str().is_some_and(|s| s.contains(order_id)))
            .count()
    }
}

/// "€28.00": how the page shows minor units of EUR.
fn euros(minor: i64) -> String {
    format!("€{}.{:02}", minor / 100, minor % 100)
}

fn price_of(runner: &Runner, sku: &str) -> i64 {
    let (_, catalogue) = runner.get("/api/products");
    catalogue["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["sku"] == sku)
        .and_then(|p| p["price"]["minor"].as_i64())
        .unwrap()
}

fn text_of(browser: &Browser, css: &str) -> String {
    browser.texts(css).into_iter().next().unwrap_or_default()
}

fn add(browser: &Browser, sku: &str) {
    browser.click(&format!("#products [data-sku=\"{sku}\"] .add-button"));
}

fn fill_checkout(browser: &Browser, email: &str, card: &str) {
    browser.fill("#email", email);
    browser.fill("#card-number", card);
    browser.fill("#card-expiry", "12/39");
    browser.fill("#card-cvc", "123");
}

/// Waits for the order page and returns the order's id.
fn order_page(browser: &Browser) -> String {
    let url = browser
        .wait_until(
            "the order page",
            "return /\\/orders\\/ord_[0-9a-f]{32}$/.test(location.pathname) ? location.pathname : null;",
            vec![],
        )
        .as_str()
        .unwrap()
        .to_owned();
    url.trim_start_matches("/orders/").to_owned()
}

/// Waits until the order page shows `status` and the email step `email_title`.
fn wait_for_steps(browser: &Browser, status: &str, email_title: &str) {
    browser.wait_until(
        &format!("the order page to show {status} and {email_title:?}"),
        "return document.querySelector('#order-status').innerText === arguments[0] \
            && document.querySelector('[data-step=email] .step-title').innerText === arguments[1];",
        vec![json!(status), json!(email_title)],
    );
}

fn alert(browser: &Browser) -> String {
    browser
        .wait_until(
            "the checkout's answer",
            "const a = document.querySelector('#form-alert'); return a.hidden ? null : a.innerText;",
            vec![],
        )
        .as_str()
        .unwrap()
        .to_owned()
}

/// Detail the API gives for `pointer` when sent `body`.
fn api_detail(runner: &Runner, body: &Value, pointer: &str) -> String {
    let reply = runner.post_json("/api/orders", body, None);
    assert_eq!(reply.status, 422, "{reply:?}");
    reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pointer"] == pointer)
        .and_then(|e| e["detail"].as_str())
        .unwrap_or_else(|| panic!("no {pointer} in {reply:?}"))
        .to_owned()
}

/// The whole purchase: two products, an invalid card refused next to its field, a
/// valid one sent from the keyboard, then the order page until it is confirmed and
/// emailed, with the link to its trace.
#[test]
fn a_shopper_buys_two_products_and_watches_the_order_confirm() {
    let shop = start("storefront-buy");
    let browser = shop.open(1280, 1050);
    let (mugs, stickers) = (shop.runner.available(MUG), shop.runner.available(STICKERS));
    assert_eq!(
        text_of(&browser, &format!("[data-sku=\"{MUG}\"] .stock")),
        format!("{mugs} in stock")
    );
    assert_eq!(
        text_of(&browser, &format!("[data-sku=\"{PRINT}\"] .stock")),
        format!("Only {} left", shop.runner.available(PRINT))
    );

    add(&browser, MUG);
    add(&browser, STICKERS);
    browser.click(&format!(
        "#cart-lines [data-sku=\"{MUG}\"] button[aria-label^=\"One more\"]"
    ));
    let total = 2 * price_of(&shop.runner, MUG) + price_of(&shop.runner, STICKERS);
    assert_eq!(text_of(&browser, "#cart-total"), euros(total));
    assert_eq!(text_of(&browser, "#cart-count"), "3");
    assert_eq!(
        browser.execute(
            "return document.querySelector(arguments[0]).value;",
            vec![json!(format!("#quantity-{MUG}"))]
        ),
        "2"
    );
    assert_eq!(
        text_of(&browser, "#pay-label"),
        format!("Pay {}", euros(total))
    );
    browser.screenshot(&screenshot_path("storefront-products.png"));
    // Nothing comes from elsewhere: no fonts, scripts or styles of another origin.
    assert_eq!(
        browser.execute(
            "return performance.getEntriesByType('resource').map(e => e.name)
                .filter(url => !url.startsWith(location.origin + '/'));",
            vec![]
        ),
        json!([])
    );

    // An invalid card: the API's words, next to the field, which gets the focus.
    fill_checkout(&browser, "ada@example.com", INVALID_CARD);
    browser.click("#pay");
    let shown = browser.wait_until(
        "the card number's error",
        "const e = document.querySelector('#card-number-error'); return e.hidden ? null : e.innerText;",
        vec![],
    );
    let detail = api_detail(
        &shop.runner,
        &order(MUG, 2, INVALID_CARD, "ada@example.com"),
        "/card/number",
    );
    assert!(
        shown.as_str().unwrap().contains(&detail),
        "{shown} does not say {detail:?}"
    );
    assert_eq!(
        browser.execute(
            "const f = document.querySelector('#card-number'); \
             return [f.getAttribute('aria-invalid'), document.activeElement === f];",
            vec![]
        ),
        json!(["true", true])
    );
    assert!(alert(&browser).contains("check the highlighted"));
    assert_eq!(
        shop.runner.available(MUG),
        mugs,
        "an invalid card took stock"
    );

    // Corrected, and sent with Enter from the CVC field.
    browser.fill("#card-number", APPROVED_CARD);
    assert_eq!(
        browser.execute(
            "return document.querySelector('#card-number-error').hidden;",
            vec![]
        ),
        true
    );
    browser.type_keys("#card-cvc", ENTER);
    let order_id = order_page(&browser);
    wait_for_steps(&browser, "confirmed", "Email sent");
    let (status, order) = shop.runner.get(&format!("/api/orders/{order_id}"));
    assert_eq!(status, 200);
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["notification"]["state"], "sent");
    let page = browser.wait_for_text("the summary", |t| t.contains("Total"));
    assert!(
        page.contains("Thank you: your order is confirmed"),
        "{page}"
    );
    assert!(page.contains(&euros(total)), "{page}");
    assert!(page.contains("a***@example.com"), "{page}");
    assert!(page.contains("Visa ending 4242"), "{page}");
    let trace_link = browser.execute(
        "const p = document.querySelector('#order-trace'); \
         return p.hidden ? null : document.querySelector('#trace-link').href;",
        vec![],
    );
    assert_eq!(trace_link, order["trace_url"]);
    assert!(trace_link
        .as_str()
        .unwrap()
        .starts_with(&format!("{}/traces/", shop.viewer.base_url)));
    browser.screenshot(&screenshot_path("storefront-order-confirmed.png"));

    assert_eq!(shop.runner.available(MUG), mugs - 2);
    assert_eq!(shop.runner.available(STICKERS), stickers - 1);
    assert_eq!(shop.emails_for(&order_id), 1);

    // The shop afterwards: an empty cart and the new stock.
    shop.show_products(&browser);
    assert_eq!(text_of(&browser, "#cart-count"), "0");
    assert_eq!(
        text_of(&browser, &format!("[data-sku=\"{MUG}\"] .stock")),
        format!("{} in stock", mugs - 2)
    );
}

/// While fulfilment is down the order waits, and the page says so without a word of
/// success; once fulfilment is back (and redrive republishes the order), the page shows
/// each step by itself.
#[test]
fn the_order_page_says_nothing_of_success_until_the_order_is_confirmed() {
    let shop = start_with(
        "storefront-waiting",
        RunnerOptions {
            components: &["checkout", "storefront"],
            ..RunnerOptions::default()
        },
    );
    let reply = shop.runner.post_json(
        "/api/orders",
        &order(MUG, 1, APPROVED_CARD, "ada@example.com"),
        Some("storefront-waiting-1"),
    );
    assert_eq!(reply.status, 202, "{reply:?}");
    let order_id = reply.body["order_id"].as_str().unwrap().to_owned();
    let browser = Browser::start(&shop.scratch, 1280, 900);
    browser.goto(&shop.url(&format!("/orders/{order_id}")));
    wait_for_steps(&browser, "accepted", "Confirmation email");
    // A few polls later it still waits, and says so.
    std::thread::sleep(Duration::from_millis(2500));
    let page = browser.wait_for_text("the waiting order", |t| t.contains("Confirming payment"));
    let lower = page.to_lowercase();
    for word in ["confirmed", "success", "thank you", "email sent"] {
        assert!(
            !lower.contains(word),
            "{word:?} shown before confirmation:\n{page}"
        );
    }
    assert_eq!(text_of(&browser, "#order-status"), "accepted");

    let fulfilment = Runner::start(
        &shop.scratch,
        &shop.redis,
        &shop.mail,
        RunnerOptions {
            components: &["fulfilment"],
            ..RunnerOptions::default()
        },
    );
    shop.redis.wait_for_subscribers(CHANNEL, 1);
    let (status, body) = shop
        .runner
        .admin_post("/api/admin/redrive?older_than_seconds=0");
    assert_eq!(status, 200, "{body}");
    wait_for_steps(&browser, "confirmed", "Email sent");
    let said = browser.wait_until(
        "the change to be announced",
        "const t = document.querySelector('#announcer').innerText; return t.includes('Email sent') ? t : null;",
        vec![],
    );
    assert!(said.as_str().unwrap().contains("Email sent"), "{said}");
    assert_eq!(
        browser.execute(
            "return document.querySelector('#announcer').getAttribute('aria-live');",
            vec![]
        ),
        "polite"
    );
    drop(fulfilment);
}

/// A declined card is refused at checkout, next to the card number; a card whose
/// capture fails makes an order that ends `failed`, with the reason, and its email.
#[test]
fn a_declined_card_and_a_failed_payment_are_shown_as_such() {
    let shop = start("storefront-declined");
    let browser = shop.open(1280, 900);
    let prints = shop.runner.available(PRINT);
    add(&browser, PRINT);
    fill_checkout(&browser, "ada@example.com", DECLINED_CARD);
    browser.click("#pay");
    let said = alert(&browser);
    assert!(said.contains("Payment declined"), "{said}");
    assert!(said.contains("declined the payment"), "{said}");
    assert_eq!(
        text_of(&browser, "#card-number-error"),
        "The card was declined."
    );
    assert_eq!(shop.runner.available(PRINT), prints);

    browser.fill("#card-number", CAPTURE_FAILS_CARD);
    browser.click("#pay");
    let order_id = order_page(&browser);
    wait_for_steps(&browser, "failed", "Email sent");
    let (_, order) = shop.runner.get(&format!("/api/orders/{order_id}"));
    assert_eq!(order["status"], "failed");
    let reason = order["reason"].as_str().unwrap();
    let detail = text_of(&browser, "[data-step=payment] .step-detail");
    assert!(
        detail.to_lowercase().contains(&reason.to_lowercase()),
        "{detail:?} lacks {reason:?}"
    );
    assert_eq!(
        text_of(&browser, "[data-step=payment] .step-title"),
        "Order failed"
    );
    let page = browser.wait_for_text("the failed order", |t| t.contains("could not be completed"));
    assert!(!page.to_lowercase().contains("confirmed"), "{page}");
    assert_eq!(shop.runner.available(PRINT), prints, "the stock came back");
    assert_eq!(shop.emails_for(&order_id), 1);
}

/// The provider refuses the email (unverified sender): the order is confirmed, and the
/// page shows the email failed, in the provider's words.
#[test]
fn a_refused_email_shows_the_providers_message() {
    let shop = start_with(
        "storefront-unverified",
        RunnerOptions {
            mail_from: "orders@unverified.example".into(),
            ..RunnerOptions::default()
        },
    );
    let browser = shop.open(1280, 900);
    add(&browser, MUG);
    fill_checkout(&browser, "ada@example.com", APPROVED_CARD);
    browser.click("#pay");
    let order_id = order_page(&browser);
    wait_for_steps(&browser, "confirmed", "Email failed");
    let (_, order) = shop.runner.get(&format!("/api/orders/{order_id}"));
    let reason = order["notification"]["reason"].as_str().unwrap();
    assert!(reason.contains("unverified.example"), "{order}");
    let detail = text_of(&browser, "[data-step=email] .step-detail");
    assert!(detail.contains(reason), "{detail:?} lacks {reason:?}");
}

/// Two submits at once make one order, and so does a retry after the answer was lost
/// (the page resends the attempt with its Idempotency-Key).
#[test]
fn a_double_submit_or_a_retry_after_a_lost_answer_makes_one_order() {
    let shop = start("storefront-double");
    let browser = shop.open(1280, 900);
    let stickers = shop.runner.available(STICKERS);
    // Every order request the page sends, kept across the navigation to the order page.
    let record_requests = "
        const send = window.fetch;
        window.fetch = (url, init) => {
            if (String(url) === '/api/orders' && init && init.method === 'POST') {
                const sent = JSON.parse(sessionStorage.getItem('sent') || '[]');
                sent.push(init.headers['idempotency-key']);
                sessionStorage.setItem('sent', JSON.stringify(sent));
            }
            return send(url, init);
        };";
    let sent = |browser: &Browser| -> Vec<String> {
        let value = browser.execute(
            "return JSON.parse(sessionStorage.getItem('sent') || '[]');",
            vec![],
        );
        serde_json::from_value(value).unwrap()
    };

    add(&browser, STICKERS);
    fill_checkout(&browser, "ada@example.com", APPROVED_CARD);
    browser.execute(record_requests, vec![]);
    browser.execute(
        "const form = document.querySelector('#checkout-form'); \
         form.requestSubmit(); form.requestSubmit(); document.querySelector('#pay').click();",
        vec![],
    );
    let first = order_page(&browser);
    wait_for_steps(&browser, "confirmed", "Email sent");
    assert_eq!(sent(&browser).len(), 1, "{:?}", sent(&browser));
    assert_eq!(shop.runner.available(STICKERS), stickers - 1);

    // The answer to the first request is lost (the order was placed); the shopper
    // presses Pay again.
    shop.show_products(&browser);
    add(&browser, STICKERS);
    fill_checkout(&browser, "ada@example.com", APPROVED_CARD);
    browser.execute(record_requests, vec![]);
    browser.execute(
        "const send = window.fetch; let lost = false;
         window.fetch = async (url, init) => {
             const response = await send(url, init);
             if (String(url) === '/api/orders' && !lost) {
                 lost = true;
                 throw new TypeError('Failed to fetch');
             }
             return response;
         };",
        vec![],
    );
    browser.click("#pay");
    let said = alert(&browser);
    assert!(said.contains("could not be reached"), "{said}");
    assert_eq!(
        shop.runner.available(STICKERS),
        stickers - 2,
        "the first request placed the order"
    );
    browser.click("#pay");
    let second = order_page(&browser);
    assert_ne!(second, first);
    wait_for_steps(&browser, "confirmed", "Email sent");
    let keys = sent(&browser);
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(keys[1], keys[2], "the retry is the same attempt");
    assert_ne!(keys[0], keys[1], "another purchase is another attempt");
    assert!(keys.iter().all(|k| k.len() >= 32), "{keys:?}");
    assert_eq!(
        shop.runner.available(STICKERS),
        stickers - 2,
        "one order each"
    );
    assert_eq!(shop.emails_for(&first), 1);
    assert_eq!(shop.emails_for(&second), 1);
    assert_eq!(shop.mail.messages().len(), 2);
}

/// Someone else buys while the shopper is checking out: the API's refusal shows on the
/// cart line, with the stock left; fewer can then be bought, and a sold-out product
/// cannot be added.
#[test]
fn buying_more_than_the_stock_is_refused_and_sold_out_cannot_be_added() {
    let shop = start("storefront-stock");
    let browser = shop.open(1280, 900);
    let prints = shop.runner.available(PRINT);
    assert!(prints > 1, "{prints}");
    for _ in 0..prints {
        add(&browser, PRINT);
    }
    let button = format!("#products [data-sku=\"{PRINT}\"] .add-button");
    assert_eq!(
        browser.execute(
            "const b = document.querySelector(arguments[0]); return [b.disabled, b.innerText];",
            vec![json!(button)]
        ),
        json!([true, "All in your cart"])
    );

    let other = shop.runner.post_json(
        "/api/orders",
        &order(PRINT, 1, APPROVED_CARD, "grace@example.com"),
        Some("someone-else"),
    );
    assert_eq!(other.status, 202, "{other:?}");
    fill_checkout(&browser, "ada@example.com", APPROVED_CARD);
    browser.click("#pay");
    let said = alert(&browser);
    assert!(said.contains("Not enough stock"), "{said}");
    assert!(
        said.contains(&format!("Only {} of Signed limited print left", prints - 1)),
        "{said}"
    );
    assert_eq!(
        text_of(&browser, &format!("#line-error-{PRINT}")),
        format!("Only {} available.", prints - 1)
    );
    browser.wait_until(
        "the product's new stock",
        "return document.querySelector(arguments[0]).innerText === arguments[1];",
        vec![
            json!(format!("[data-sku=\"{PRINT}\"] .stock")),
            json!(format!("Only {} left", prints - 1)),
        ],
    );
    assert_eq!(shop.runner.available(PRINT), prints - 1);

    // Buy what is left.
    browser.click(&format!(
        "#cart-lines [data-sku=\"{PRINT}\"] button[aria-label^=\"One fewer\"]"
    ));
    assert_eq!(browser.texts(&format!("#line-error-{PRINT}")), [""]);
    browser.click("#pay");
    let order_id = order_page(&browser);
    wait_for_steps(&browser, "confirmed", "Email sent");
    assert_eq!(shop.runner.available(PRINT), 0);
    assert_eq!(shop.emails_for(&order_id), 1);

    shop.show_products(&browser);
    assert_eq!(
        text_of(&browser, &format!("[data-sku=\"{PRINT}\"] .stock")),
        "Sold out"
    );
    assert_eq!(
        browser.execute(
            "const b = document.querySelector(arguments[0]); return [b.disabled, b.innerText];",
            vec![json!(button)]
        ),
        json!([true, "Sold out"])
    );
    browser.execute(
        "document.querySelector(arguments[0]).click();",
        vec![json!(button)],
    );
    assert_eq!(text_of(&browser, "#cart-count"), "0");
}

/// At phone width nothing overflows sideways; every field has a label, every button a
/// name; products are added from the keyboard and the change is announced.
#[test]
fn the_page_works_at_phone_width_from_the_keyboard_with_labelled_fields() {
    let shop = start("storefront-phone");
    let browser = shop.open_on_phone(390, 844);
    assert_eq!(browser.execute("return window.innerWidth;", vec![]), 390);
    browser.type_keys(
        &format!("#products [data-sku=\"{MUG}\"] .add-button"),
        ENTER,
    );
    browser.type_keys(
        &format!("#products [data-sku=\"{STICKERS}\"] .add-button"),
        ENTER,
    );
    assert_eq!(text_of(&browser, "#cart-count"), "2");
    let said = browser.wait_until(
        "the addition to be announced",
        "return document.querySelector('#announcer').innerText;",
        vec![],
    );
    assert!(
        said.as_str().unwrap().contains("added to your cart"),
        "{said}"
    );
    let layout = browser.execute(
        "return {
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            unlabelled: [...document.querySelectorAll('input')]
                .filter(i => i.labels.length === 0 || !i.labels[0].innerText.trim())
                .map(i => i.id),
            unnamed: [...document.querySelectorAll('button')]
                .filter(b => !(b.getAttribute('aria-label') || b.textContent).trim())
                .map(b => b.outerHTML),
        };",
        vec![],
    );
    assert_eq!(layout["overflow"], 0, "{layout}");
    assert_eq!(layout["unlabelled"], json!([]), "{layout}");
    assert_eq!(layout["unnamed"], json!([]), "{layout}");

    // The order page at phone width.
    fill_checkout(&browser, "ada@example.com", APPROVED_CARD);
    browser.type_keys("#card-cvc", ENTER);
    order_page(&browser);
    wait_for_steps(&browser, "confirmed", "Email sent");
    browser.screenshot(&screenshot_path("storefront-phone-order.png"));
    let overflow = browser.execute(
        "return document.documentElement.scrollWidth - window.innerWidth;",
        vec![],
    );
    assert_eq!(overflow, 0);
}

// Plain HTTP ------------------------------------------------------------------------

fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::blocking::Response {
    let mut request = http().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().expect("GET")
}

fn header(response: &reqwest::blocking::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Every `/static/...` the page refers to.
fn static_references(html: &str) -> Vec<String> {
    html.split("\"/static/")
        .skip(1)
        .map(|rest| format!("/static/{}", &rest[..rest.find('"').unwrap()]))
        .collect()
}

#[test]
fn the_page_and_its_files_have_their_types_caching_and_validators() {
    let shop = start("storefront-http");
    let page = get(&shop.url("/"), &[]);
    assert_eq!(page.status(), 200);
    assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&page, "cache-control"), "no-cache");
    assert_eq!(header(&page, "referrer-policy"), "no-referrer");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    assert!(header(&page, "content-security-policy").contains("default-src 'none'"));
    let etag = header(&page, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag:?}");
    let html = page.text().unwrap();

    let revalidated = get(&shop.url("/"), &[("if-none-match", &etag)]);
    assert_eq!(revalidated.status(), 304);
    assert_eq!(header(&revalidated, "etag"), etag);
    assert!(revalidated.bytes().unwrap().is_empty());
    assert_eq!(
        get(&shop.url("/"), &[("if-none-match", "\"stale\"")]).status(),
        200
    );

    // An order's page is the same page, and shareable.
    let order_page = get(&shop.url(&format!("/orders/ord_{}", "ab".repeat(16))), &[]);
    assert_eq!(order_page.status(), 200);
    assert_eq!(order_page.text().unwrap(), html);

    let references = static_references(&html);
    assert_eq!(references.len(), 3, "{references:?}");
    for reference in references {
        let (stem, rest) = reference.split_once('.').unwrap();
        let (hash, extension) = rest.split_once('.').unwrap();
        assert_eq!(hash.len(), 16, "{reference} is not fingerprinted");
        let content_type = match extension {
            "css" => "text/css; charset=utf-8",
            "js" => "text/javascript; charset=utf-8",
            "svg" => "image/svg+xml",
            other => panic!("{reference}: unexpected .{other}"),
        };
        let versioned = get(&shop.url(&reference), &[]);
        assert_eq!(versioned.status(), 200, "{reference}");
        assert_eq!(header(&versioned, "content-type"), content_type);
        assert_eq!(
            header(&versioned, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(header(&versioned, "etag"), format!("\"{hash}\""));
        let length: usize = header(&versioned, "content-length").parse().unwrap();
        let body = versioned.bytes().unwrap();
        assert_eq!(length, body.len());
        // Its plain name: the same bytes, revalidated.
        let plain = get(&shop.url(&format!("{stem}.{extension}")), &[]);
        assert_eq!(plain.status(), 200);
        assert_eq!(header(&plain, "cache-control"), "no-cache");
        assert_eq!(plain.bytes().unwrap(), body);
        let head = http().head(shop.url(&reference)).send().unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(header(&head, "content-type"), content_type);
        assert!(head.bytes().unwrap().is_empty());
        let weak = get(
            &shop.url(&reference),
            &[("if-none-match", &format!("W/\"{hash}\""))],
        );
        assert_eq!(weak.status(), 304);
    }
}

#[test]
fn unknown_files_are_404_and_the_api_keeps_its_routes() {
    let shop = start_with(
        "storefront-routes",
        RunnerOptions {
            components: &["checkout", "storefront"],
            ..RunnerOptions::default()
        },
    );
    // Browsers get a page, everything else problem details.
    for path in [
        "/static/nope.js",
        "/static/app.0000000000000000.js",
        "/orders/nope",
        "/apiary",
    ] {
        let problem = get(&shop.url(path), &[]);
        assert_eq!(problem.status(), 404, "{path}");
        assert_eq!(header(&problem, "content-type"), "application/problem+json");
        assert_eq!(header(&problem, "cache-control"), "no-store");
        let body: Value = problem.json().unwrap();
        assert_eq!(
            body["detail"],
            format!("no page or file at {path}"),
            "{body}"
        );
        let page = get(
            &shop.url(path),
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
        );
        assert_eq!(page.status(), 404);
        assert_eq!(header(&page, "content-type"), "text/html; charset=utf-8");
        assert!(page
            .text()
            .unwrap()
            .contains("There is nothing at this address"));
    }
    let post = http().post(shop.url("/")).body("x").send().unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(header(&post, "allow"), "GET, HEAD");

    // The more specific /api/... route wins over /...: checkout answers there.
    let (status, catalogue) = shop.runner.get("/api/products");
    assert_eq!(status, 200);
    assert!(catalogue["products"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));
    for path in ["/api", "/api/", "/api/nope", "/api/static/app.css"] {
        let (status, body) = shop.runner.get(path);
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            body["detail"],
            format!("no such resource: {path}"),
            "{path}: {body}"
        );
    }
    let (status, body) = shop
        .runner
        .get(&format!("/api/orders/ord_{}", "ab".repeat(16)));
    assert_eq!(
        (status, body["type"].as_str()),
        (404, Some("/problems/not-found"))
    );
}

/// The storefront needs nothing of its host but the HTTP trigger: alone, without Redis,
/// variables, a runtime config or `--experimental-wasi-otel`, it serves the page.
#[test]
fn the_storefront_runs_alone_on_a_bare_host() {
    let scratch = Scratch::new("storefront-alone");
    let port = free_port();
    let mut runner = Process::spawn(
        &format!("runner-{port}"),
        Command::new(runner_binary())
            .arg("up")
            .arg("--from")
            .arg(workspace_root().join("spin.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--component-id", "storefront"])
            .current_dir(scratch.path()),
        scratch.path(),
    );
    let url = format!("http://127.0.0.1:{port}/");
    let page = wait_for("the storefront alone", Duration::from_secs(120), || {
        if let Some(status) = runner.exited() {
            panic!("the runner exited with {status}:\n{}", runner.log());
        }
        get_quietly(&url)
    });
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("Spin Shop"));
    assert!(!scratch.path().join(".spin").exists(), "it opened a store");
}

fn get_quietly(url: &str) -> Option<reqwest::blocking::Response> {
    http().get(url).send().ok()
}
