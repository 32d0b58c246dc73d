/*
 * The Spin Shop's page: plain JavaScript, no framework, no build step.
 *
 * - The shop (/): products with live stock (GET /api/products), a cart kept in this
 *   browser, and checkout (POST /api/orders). Each checkout attempt carries its own
 *   Idempotency-Key; a retry of an attempt whose outcome is unknown (network failure,
 *   5xx, the first request still running) sends the same key and the same body, so a
 *   double click or a retry makes one order.
 * - An order (/orders/{id}): GET /api/orders/{id} every second until the order and its
 *   email have settled, each step shown as it happens. The page says "confirmed" only
 *   when the API does.
 *
 * Everything the API sends is shown as text (never as HTML).
 */
'use strict';

(function () {
  const CART_KEY = 'spin-shop.cart.v1';
  /** The API accepts 1 to 10 units of one product per order. */
  const MAX_PER_LINE = 10;
  const LOW_STOCK = 5;
  const STOCK_REFRESH_MS = 15000;
  /** Times a checkout waits for an earlier request with its key to finish (409). */
  const IN_PROGRESS_RETRIES = 5;

  const $ = (id) => document.getElementById(id);

  /** An element with attributes (`class`, `text`, others as is) and children. */
  function h(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') element.className = value;
      else if (name === 'text') element.textContent = value;
      else element.setAttribute(name, value === true ? '' : String(value));
    }
    element.append(...children.filter((c) => c !== null && c !== undefined));
    return element;
  }

  function icon(name, className) {
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    if (className) svg.setAttribute('class', className);
    const use = document.createElementNS('http://www.w3.org/2000/svg', 'use');
    use.setAttribute('href', `#icon-${name}`);
    svg.append(use);
    return svg;
  }

  const formatters = new Map();
  /** Minor units (cents) as money, e.g. 1200 EUR -> "€12.00". */
  function money(minor, currency) {
    let formatter = formatters.get(currency);
    if (!formatter) {
      try {
        formatter = new Intl.NumberFormat('en-IE', { style: 'currency', currency });
      } catch {
        formatter = { format: (value) => `${value.toFixed(2)} ${currency}` };
      }
      formatters.set(currency, formatter);
    }
    return formatter.format(minor / 100);
  }

  /** Says `text` to screen readers (the page's one polite live region). */
  function announce(text) {
    const region = $('announcer');
    region.textContent = '';
    // A fresh node after a beat, so the same words twice are read twice.
    window.setTimeout(() => { region.textContent = text; }, 60);
  }

  /** A detail from the API as a sentence next to its field: "Email is required." */
  function sentence(label, detail) {
    let text = String(detail || '').trim();
    if (!text) return '';
    if (label && /^(is|are|must|contains|has|fails)\b/.test(text)) text = `${label} ${text}`;
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?)]$/.test(text) ? text : `${text}.`;
  }

  /** 128 random bits; `getRandomValues` works on plain-HTTP origins too (randomUUID does not). */
  function newIdempotencyKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { accept: 'application/json' }, cache: 'no-store' });
    const body = await response.json().catch(() => null);
    return { status: response.status, body };
  }

  const sleep = (ms) => new Promise((resolve) => window.setTimeout(resolve, ms));

  // ---------------------------------------------------------------------------------
  // The shop

  const shop = {
    products: [],
    loaded: false,
    cart: [],
    /** The checkout attempt whose outcome is unknown: { key, body }. */
    attempt: null,
    submitting: false,
    /** Set once an order is placed and the order page is opening. */
    leaving: false,
    /** Messages the API gave for cart lines, by SKU. */
    lineErrors: new Map(),
    productCards: new Map(),
    cartLines: new Map(),
  };

  const FIELDS = {
    email: { pointer: '/email', label: 'Email' },
    'card-number': { pointer: '/card/number', label: 'Card number' },
    'card-expiry': { pointer: '/card/expiry', label: 'Expiry' },
    'card-cvc': { pointer: '/card/cvc', label: 'CVC' },
  };

  function loadCart() {
    try {
      const saved = JSON.parse(localStorage.getItem(CART_KEY) || '[]');
      if (!Array.isArray(saved)) return [];
      return saved
        .filter((l) => l && typeof l.sku === 'string' && Number.isInteger(l.quantity) && l.quantity > 0)
        .map((l) => ({ sku: l.sku, quantity: Math.min(l.quantity, MAX_PER_LINE) }));
    } catch {
      return [];
    }
  }

  function saveCart() {
    try {
      localStorage.setItem(CART_KEY, JSON.stringify(shop.cart));
    } catch {
      // Storage refused (private mode, full): the cart lasts as long as the page.
    }
  }

  const productBySku = (sku) => shop.products.find((p) => p.sku === sku);
  const lineOf = (sku) => shop.cart.find((l) => l.sku === sku);
  const inCart = (sku) => (lineOf(sku) ? lineOf(sku).quantity : 0);

  function artFor(sku) {
    if (/MUG/.test(sku)) return 'mug';
    if (/TEE|SHIRT/.test(sku)) return 'tee';
    if (/STICKER/.test(sku)) return 'stickers';
    if (/PRINT|POSTER/.test(sku)) return 'print';
    return 'box';
  }

  function startShop() {
    $('shop-view').hidden = false;
    shop.cart = loadCart();
    $('checkout-form').addEventListener('submit', submitCheckout);
    for (const id of Object.keys(FIELDS)) {
      $(id).addEventListener('input', () => clearFieldError(id));
    }
    renderCart();
    refreshProducts();
    window.setInterval(() => {
      if (document.visibilityState === 'visible') refreshProducts();
    }, STOCK_REFRESH_MS);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') refreshProducts();
    });
    // Back from an order page: the cart was emptied when the order was placed.
    window.addEventListener('pageshow', (event) => {
      if (!event.persisted) return;
      shop.cart = loadCart();
      shop.leaving = false;
      setSubmitting(false);
      renderCart();
      refreshProducts();
    });
  }

  async function refreshProducts() {
    try {
      const { status, body } = await getJson('/api/products');
      if (status !== 200 || !body || !Array.isArray(body.products)) {
        throw new Error((body && body.detail) || `the shop answered ${status}`);
      }
      shop.products = body.products;
      shop.loaded = true;
      shop.cart = shop.cart.filter((l) => productBySku(l.sku));
      setProductsStatus(null);
    } catch (error) {
      if (!shop.loaded) {
        setProductsStatus(`The products could not be loaded (${error.message}). Trying again…`);
        window.setTimeout(refreshProducts, 3000);
      }
    }
    renderProducts();
    renderCart();
  }

  function setProductsStatus(text) {
    const status = $('products-status');
    status.hidden = !text;
    status.textContent = text || '';
    status.className = text ? 'notice error' : 'notice';
  }

  function renderProducts() {
    const list = $('products');
    list.setAttribute('aria-busy', shop.loaded ? 'false' : 'true');
    for (const product of shop.products) {
      let card = shop.productCards.get(product.sku);
      if (!card) {
        card = productCard(product);
        shop.productCards.set(product.sku, card);
        list.append(card.item);
      }
      updateProductCard(card, product);
    }
  }

  function productCard(product) {
    const art = artFor(product.sku);
    const stockId = `stock-${product.sku}`;
    const price = h('p', { class: 'price' });
    const stock = h('p', { class: 'stock', id: stockId });
    const button = h('button', { type: 'button', class: 'button add-button', 'aria-describedby': stockId });
    button.addEventListener('click', () => addToCart(product.sku));
    const item = h('li', { class: 'product', 'data-sku': product.sku },
      h('div', { class: `product-art art-${art}` }, icon(art)),
      h('h2', { class: 'product-name', text: product.name }),
      h('p', { class: 'product-sku', text: product.sku }),
      h('div', { class: 'product-meta' }, price, stock),
      button);
    return { item, price, stock, button };
  }

  function updateProductCard(card, product) {
    const available = Math.max(0, product.available | 0);
    const limit = Math.min(available, MAX_PER_LINE);
    const taken = inCart(product.sku);
    card.price.textContent = money(product.price.minor, product.price.currency);
    card.stock.textContent = available === 0 ? 'Sold out'
      : available <= LOW_STOCK ? `Only ${available} left` : `${available} in stock`;
    card.stock.className = `stock${available === 0 ? ' none' : available <= LOW_STOCK ? ' low' : ''}`;
    card.item.classList.toggle('sold-out', available === 0);
    let label = taken > 0 ? 'Add another' : 'Add to cart';
    if (available === 0) label = 'Sold out';
    else if (taken >= limit) label = limit === MAX_PER_LINE ? `Limit ${MAX_PER_LINE} per order` : 'All in your cart';
    const wasFocused = document.activeElement === card.button;
    card.button.textContent = label;
    card.button.setAttribute('aria-label', `${label}: ${product.name}`);
    card.button.disabled = available === 0 || taken >= limit;
    // A button that just became disabled loses focus: keep the keyboard in the cart.
    if (wasFocused && card.button.disabled) {
      const line = shop.cartLines.get(product.sku);
      if (line) line.input.focus();
    }
  }

  function addToCart(sku) {
    const product = productBySku(sku);
    if (!product) return;
    const limit = Math.min(Math.max(0, product.available), MAX_PER_LINE);
    const line = lineOf(sku);
    if ((line ? line.quantity : 0) >= limit) return;
    if (line) line.quantity += 1;
    else shop.cart.push({ sku, quantity: 1 });
    cartChanged(sku);
    announce(`${product.name} added to your cart. ${cartSentence()}`);
  }

  function setQuantity(sku, quantity) {
    const product = productBySku(sku);
    const line = lineOf(sku);
    if (!line) return;
    if (quantity <= 0) {
      shop.cart = shop.cart.filter((l) => l.sku !== sku);
      cartChanged(sku);
      announce(`${product ? product.name : sku} removed. ${cartSentence()}`);
      const next = document.querySelector('#cart-lines input') || $('cart');
      next.focus();
      return;
    }
    line.quantity = Math.min(quantity, MAX_PER_LINE);
    cartChanged(sku);
    announce(`${line.quantity} × ${product ? product.name : sku}. ${cartSentence()}`);
  }

  function cartChanged(sku) {
    shop.lineErrors.delete(sku);
    hideAlert();
    $('cart-error').hidden = true;
    saveCart();
    renderCart();
    renderProducts();
  }

  function cartTotals() {
    let count = 0;
    let minor = 0;
    let currency = 'EUR';
    for (const line of shop.cart) {
      const product = productBySku(line.sku);
      count += line.quantity;
      if (product) {
        minor += product.price.minor * line.quantity;
        currency = product.price.currency;
      }
    }
    return { count, minor, currency };
  }

  function cartSentence() {
    const { count, minor, currency } = cartTotals();
    if (count === 0) return 'Your cart is empty.';
    return `Your cart has ${count} ${count === 1 ? 'item' : 'items'}, ${money(minor, currency)} in total.`;
  }

  function renderCart() {
    const list = $('cart-lines');
    const { count, minor, currency } = cartTotals();
    for (const [sku, line] of shop.cartLines) {
      if (!lineOf(sku)) {
        line.item.remove();
        shop.cartLines.delete(sku);
      }
    }
    for (const entry of shop.cart) {
      const product = productBySku(entry.sku);
      if (!product) continue;
      let line = shop.cartLines.get(entry.sku);
      if (!line) {
        line = cartLine(product);
        shop.cartLines.set(entry.sku, line);
        list.append(line.item);
      }
      updateCartLine(line, entry, product);
    }
    const empty = shop.cart.length === 0;
    $('cart-empty').hidden = !empty;
    $('cart-total-row').hidden = empty;
    $('cart-total').textContent = money(minor, currency);
    $('cart-count').textContent = String(count);
    $('cart-count-label').textContent = count === 1 ? 'item' : 'items';
    if (!shop.submitting) {
      $('pay-label').textContent = empty || !shop.loaded ? 'Pay' : `Pay ${money(minor, currency)}`;
    }
  }

  function cartLine(product) {
    const sku = product.sku;
    const inputId = `quantity-${sku}`;
    const errorId = `line-error-${sku}`;
    const input = h('input', {
      id: inputId, type: 'number', inputmode: 'numeric', min: 1, max: MAX_PER_LINE,
      'aria-describedby': errorId,
    });
    const fewer = h('button', { type: 'button', 'aria-label': `One fewer ${product.name}`, text: '−' });
    const more = h('button', { type: 'button', 'aria-label': `One more ${product.name}`, text: '+' });
    const remove = h('button', { type: 'button', class: 'link-button' },
      'Remove', h('span', { class: 'visually-hidden', text: ` ${product.name}` }));
    const subtotal = h('p', { class: 'line-subtotal' });
    const unit = h('p', { class: 'line-unit' });
    const error = h('p', { class: 'field-error line-error', id: errorId, hidden: true });
    fewer.addEventListener('click', () => setQuantity(sku, inCart(sku) - 1));
    more.addEventListener('click', () => setQuantity(sku, inCart(sku) + 1));
    remove.addEventListener('click', () => setQuantity(sku, 0));
    input.addEventListener('change', () => {
      const wanted = Number.parseInt(input.value, 10);
      if (Number.isInteger(wanted) && wanted >= 0) setQuantity(sku, wanted);
      else input.value = String(inCart(sku));
    });
    const item = h('li', { class: 'cart-line', 'data-sku': sku },
      h('div', {}, h('p', { class: 'line-name', text: product.name }), unit),
      subtotal,
      h('div', { class: 'line-controls' },
        h('label', { class: 'visually-hidden', for: inputId, text: `Quantity of ${product.name}` }),
        h('div', { class: 'stepper' }, fewer, input, more),
        remove),
      error);
    return { item, input, fewer, more, subtotal, unit, error };
  }

  function updateCartLine(line, entry, product) {
    const price = product.price;
    const available = Math.max(0, product.available | 0);
    line.unit.textContent = `${money(price.minor, price.currency)} each`;
    line.subtotal.textContent = money(price.minor * entry.quantity, price.currency);
    if (document.activeElement !== line.input) line.input.value = String(entry.quantity);
    line.fewer.disabled = entry.quantity <= 1;
    line.more.disabled = entry.quantity >= Math.min(available, MAX_PER_LINE);
    let message = shop.lineErrors.get(entry.sku) || '';
    if (!message && entry.quantity > available) {
      message = available === 0 ? 'Sold out: remove it to pay for the rest.'
        : `Only ${available} left: lower the quantity.`;
    }
    line.error.textContent = message;
    line.error.hidden = !message;
    if (message) line.input.setAttribute('aria-invalid', 'true');
    else line.input.removeAttribute('aria-invalid');
  }

  // Checkout ------------------------------------------------------------------------

  function setFieldError(id, message) {
    const error = $(`${id}-error`);
    error.textContent = message;
    error.hidden = !message;
    const input = $(id);
    if (input && input.tagName === 'INPUT') {
      if (message) input.setAttribute('aria-invalid', 'true');
      else input.removeAttribute('aria-invalid');
    }
  }

  function clearFieldError(id) {
    setFieldError(id, '');
  }

  function clearErrors() {
    for (const id of Object.keys(FIELDS)) clearFieldError(id);
    setFieldError('card', '');
    $('cart-error').hidden = true;
    shop.lineErrors.clear();
    hideAlert();
  }

  function showAlert(title, text, kind) {
    const alert = $('form-alert');
    alert.replaceChildren(h('strong', { text: title }), text ? h('span', { text }) : null);
    alert.className = kind === 'info' ? 'alert info' : 'alert';
    alert.hidden = false;
  }

  function hideAlert() {
    $('form-alert').hidden = true;
  }

  function setSubmitting(on) {
    shop.submitting = on;
    const button = $('pay');
    button.classList.toggle('busy', on);
    // Not `disabled`: the button keeps keyboard focus. Extra submits are ignored.
    if (on) button.setAttribute('aria-disabled', 'true');
    else button.removeAttribute('aria-disabled');
    $('checkout-form').setAttribute('aria-busy', on ? 'true' : 'false');
    if (on) $('pay-label').textContent = 'Placing your order…';
    else renderCart();
  }

  /** The order as the API wants it; empty fields are left out, so the API says "is required". */
  function orderBody() {
    const value = (id) => $(id).value.trim();
    const body = { items: shop.cart.map(({ sku, quantity }) => ({ sku, quantity })) };
    if (value('email')) body.email = value('email');
    const card = {};
    if (value('card-number')) card.number = value('card-number');
    if (value('card-expiry')) card.expiry = value('card-expiry');
    if (value('card-cvc')) card.cvc = value('card-cvc');
    body.card = card;
    return body;
  }

  async function submitCheckout(event) {
    event.preventDefault();
    if (shop.submitting || shop.leaving) return;
    clearErrors();
    if (shop.cart.length === 0) {
      $('cart-error').textContent = 'Your cart is empty: add a product first.';
      $('cart-error').hidden = false;
      showAlert('Nothing to pay for', 'Add a product to your cart first.');
      $('form-alert').focus();
      return;
    }
    const body = JSON.stringify(orderBody());
    // The same attempt (its outcome unknown, nothing changed) keeps its key; anything
    // else is a new attempt.
    if (!shop.attempt || shop.attempt.body !== body) {
      shop.attempt = { key: newIdempotencyKey(), body };
    }
    const attempt = shop.attempt;
    setSubmitting(true);
    try {
      await placeOrder(attempt);
    } finally {
      if (!shop.leaving) setSubmitting(false);
    }
  }

  async function placeOrder(attempt) {
    for (let waited = 0; ; waited++) {
      let response;
      let problem;
      try {
        response = await fetch('/api/orders', {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            accept: 'application/json, application/problem+json',
            'idempotency-key': attempt.key,
          },
          body: attempt.body,
          cache: 'no-store',
        });
        problem = await response.json().catch(() => null);
      } catch {
        showAlert('The shop could not be reached',
          'We do not know whether your order went through. Press Pay again: it resends this same order, and cannot place it twice.');
        announce('The shop could not be reached. Press Pay again to retry.');
        $('form-alert').focus();
        return;
      }
      if (response.status === 202 && problem && typeof problem.order_id === 'string') {
        orderPlaced(problem.order_id);
        return;
      }
      const inProgress = response.status === 409 && problem && problem.type === '/problems/idempotency-key-in-use';
      if (inProgress && waited < IN_PROGRESS_RETRIES) {
        await sleep(retryAfterMs(response));
        continue;
      }
      if (inProgress || response.status >= 500) {
        showAlert(response.status === 503 ? 'The shop is busy' : 'Something went wrong on our side',
          `${(problem && problem.detail) || `The shop answered ${response.status}.`} Press Pay again: it resends this same order, and cannot place it twice.`);
        announce('The order could not be placed yet. Press Pay again to retry.');
        $('form-alert').focus();
        return;
      }
      // A definite answer: the next press is a new attempt.
      shop.attempt = null;
      showProblem(response.status, problem || {}, JSON.parse(attempt.body));
      return;
    }
  }

  function retryAfterMs(response) {
    const seconds = Number.parseInt(response.headers.get('retry-after') || '1', 10);
    return Math.min(Math.max(Number.isFinite(seconds) ? seconds : 1, 1), 5) * 1000;
  }

  function orderPlaced(orderId) {
    shop.leaving = true;
    shop.attempt = null;
    shop.cart = [];
    saveCart();
    $('pay-label').textContent = 'Order placed: opening it…';
    announce('Order placed. Opening its page.');
    window.location.assign(`/orders/${encodeURIComponent(orderId)}`);
  }

  /** Puts each of the API's field errors next to its field, and says what happened. */
  function showProblem(status, problem, sent) {
    const errors = Array.isArray(problem.errors) ? problem.errors : [];
    const elsewhere = [];
    let firstField = null;
    for (const error of errors) {
      const pointer = typeof error.pointer === 'string' ? error.pointer : '';
      const field = Object.keys(FIELDS).find((id) => FIELDS[id].pointer === pointer);
      const item = pointer.match(/^\/items\/(\d+)(\/|$)/);
      if (field) {
        setFieldError(field, sentence(FIELDS[field].label, error.detail));
        firstField = firstField || $(field);
      } else if (item && sent.items[Number(item[1])]) {
        const sku = sent.items[Number(item[1])].sku;
        shop.lineErrors.set(sku, sentence(null, error.detail));
        const line = shop.cartLines.get(sku);
        firstField = firstField || (line ? line.input : null);
      } else if (pointer === '/card') {
        setFieldError('card', sentence('The card', error.detail));
      } else if (pointer === '/items') {
        $('cart-error').textContent = sentence('The cart', error.detail);
        $('cart-error').hidden = false;
      } else {
        elsewhere.push(sentence(null, error.detail));
      }
    }

    let title;
    let text;
    if (status === 402) {
      const reason = String(problem.detail || 'the card was declined').replace(/^[a-z_]+:\s*/, '');
      title = 'Payment declined';
      text = `${sentence(null, reason)} Nothing was charged. Try another card.`;
    } else if (problem.type === '/problems/out-of-stock') {
      const product = productBySku(problem.sku);
      const available = Number(problem.available);
      if (product && Number.isFinite(available)) product.available = available;
      const name = product ? product.name : problem.sku;
      const wanted = (sent.items.find((i) => i.sku === problem.sku) || {}).quantity;
      title = 'Not enough stock';
      text = available > 0
        ? `Only ${available} of ${name} left${wanted ? `, and your cart has ${wanted}` : ''}. Lower the quantity and pay again.`
        : `${name} has just sold out. Remove it from your cart to pay for the rest.`;
      refreshProducts();
    } else if (status === 422) {
      title = 'Please check the highlighted details';
      text = elsewhere.join(' ');
    } else {
      title = problem.title || `The shop answered ${status}`;
      text = [sentence(null, problem.detail), ...elsewhere].filter(Boolean).join(' ');
    }
    showAlert(title, text);
    renderCart();
    renderProducts();
    const fieldCount = errors.length;
    announce(`${title}. ${text} ${fieldCount > 1 ? `${fieldCount} problems are marked.` : ''}`.trim());
    if (firstField && status !== 402) firstField.focus();
    else $('form-alert').focus();
  }

  // ---------------------------------------------------------------------------------
  // One order, as it happens

  const POLL_MS = 1000;
  const SLOW_POLL_MS = 5000;
  const SLOW_AFTER_MS = 120000;

  function startOrderPage(orderId) {
    $('order-view').hidden = false;
    $('order-id').textContent = orderId;
    document.title = `Order ${orderId} · Spin Shop`;
    const started = Date.now();
    let failures = 0;
    let previous = null;

    const poll = async () => {
      let result = null;
      try {
        result = await getJson(`/api/orders/${encodeURIComponent(orderId)}`);
      } catch {
        result = null;
      }
      if (result && result.status === 200 && result.body) {
        failures = 0;
        previous = renderOrder(result.body, previous);
        if (settled(result.body)) {
          $('order-updated').textContent = 'Nothing more will change for this order.';
          return;
        }
        $('order-updated').textContent = `Checked at ${new Date().toLocaleTimeString('en-GB')}; this page updates by itself.`;
      } else if (result && result.status === 404) {
        renderMissing(orderId);
        return;
      } else {
        failures += 1;
        $('order-updated').textContent = 'The shop cannot be reached right now; trying again…';
      }
      const pause = failures > 0 ? Math.min(1000 * 2 ** failures, 15000)
        : Date.now() - started > SLOW_AFTER_MS ? SLOW_POLL_MS : POLL_MS;
      window.setTimeout(poll, pause);
    };
    poll();
  }

  function settled(order) {
    return order.status !== 'accepted' && order.notification && order.notification.state !== 'pending';
  }

  function renderMissing(orderId) {
    $('order-heading').textContent = 'Order not found';
    $('order-lead').textContent = `No order has the id ${orderId}. Check the link you were given.`;
    $('order-status').hidden = true;
    $('order-steps').hidden = true;
    $('order-summary').hidden = true;
    $('order-updated').textContent = '';
    announce('Order not found.');
  }

  const cardText = (card) => (card && card.last4
    ? `${card.brand ? card.brand.charAt(0).toUpperCase() + card.brand.slice(1) : 'Card'} ending ${card.last4}`
    : 'the card');

  function when(timestamp) {
    const date = new Date(timestamp);
    return Number.isNaN(date.getTime()) ? String(timestamp || '')
      : date.toLocaleString('en-GB', { dateStyle: 'medium', timeStyle: 'short' });
  }

  const PROVIDERS = { resend: 'Resend', postmark: 'Postmark', sendgrid: 'SendGrid', mailpit: 'Mailpit' };
  const providerName = (id) => PROVIDERS[id] || id;

  /** What each step shows: { state: waiting | current | done | failed, title, detail }. */
  function stepsOf(order) {
    const notification = order.notification || { state: 'pending' };
    const accepted = {
      state: 'done',
      title: 'Order accepted',
      detail: `Stock reserved and ${cardText(order.card)} authorised, ${when(order.created_at)}.`,
    };
    let payment;
    if (order.status === 'confirmed') {
      payment = { state: 'done', title: 'Payment confirmed', detail: 'The payment was captured. Your order is confirmed and will ship.' };
    } else if (order.status === 'failed') {
      payment = {
        state: 'failed',
        title: 'Order failed',
        detail: sentence(null, order.reason || 'the order could not be completed'),
      };
    } else {
      payment = { state: 'current', title: 'Confirming payment', detail: 'Waiting for the payment to be captured.' };
    }
    let email;
    if (notification.state === 'sent') {
      email = {
        state: 'done',
        title: 'Email sent',
        detail: `${order.status === 'failed' ? 'An email saying so' : 'The confirmation'} went to ${order.email}${notification.provider ? ` through ${providerName(notification.provider)}` : ''}.`,
      };
    } else if (notification.state === 'failed') {
      email = {
        state: 'failed',
        title: 'Email failed',
        detail: `${notification.provider ? providerName(notification.provider) : 'The mail service'} refused it: ${notification.reason || 'no reason given'}`,
      };
    } else if (notification.last_error) {
      email = { state: 'current', title: 'Sending the email', detail: `The mail service failed (${notification.last_error}); trying again.` };
    } else if (order.status === 'accepted') {
      email = { state: 'waiting', title: 'Confirmation email', detail: `Sent to ${order.email} once the payment is settled.` };
    } else {
      email = { state: 'current', title: 'Sending the email', detail: `To ${order.email}.` };
    }
    return { accepted, payment, email };
  }

  function renderOrder(order, previous) {
    const steps = stepsOf(order);
    const heading = {
      accepted: ['We have your order', 'It is accepted, and the payment is going through. This page updates by itself: you can keep it open or come back to its address later.'],
      confirmed: ['Thank you: your order is confirmed', 'The payment went through and your order will ship.'],
      failed: ['Your order could not be completed', 'It will not ship. Why is below.'],
    }[order.status] || ['Your order', ''];
    $('order-heading').textContent = heading[0];
    $('order-lead').textContent = heading[1];
    const pill = $('order-status');
    pill.textContent = order.status;
    pill.className = `pill ${order.status}`;
    pill.hidden = false;
    $('order-steps').hidden = false;

    const spoken = [];
    for (const [name, step] of Object.entries(steps)) {
      const item = document.querySelector(`.step[data-step="${name}"]`);
      item.dataset.state = step.state;
      item.querySelector('.step-title').textContent = step.title;
      item.querySelector('.step-detail').textContent = step.detail;
      const before = previous && previous[name];
      if (before && (before.state !== step.state || before.title !== step.title)) {
        spoken.push(`${step.title}. ${step.detail}`);
      }
    }
    if (spoken.length) announce(spoken.join(' '));

    const trace = $('order-trace');
    const url = safeLink(order.trace_url);
    trace.hidden = !url;
    if (url) $('trace-link').href = url;

    renderSummary(order);
    return steps;
  }

  /** Only http(s) links: the page never follows a `javascript:` URL. */
  function safeLink(raw) {
    if (typeof raw !== 'string' || !raw) return null;
    try {
      const url = new URL(raw, window.location.href);
      return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
    } catch {
      return null;
    }
  }

  function renderSummary(order) {
    $('order-summary').hidden = false;
    const rows = (order.items || []).map((line) => h('tr', {},
      h('td', {}, h('span', { text: line.name }), h('br'), h('span', { class: 'muted small', text: line.sku })),
      h('td', { class: 'num', text: String(line.quantity) }),
      h('td', { class: 'num', text: line.subtotal ? money(line.subtotal.minor, line.subtotal.currency) : '' })));
    $('order-items').replaceChildren(...rows);
    $('order-total').textContent = order.total ? money(order.total.minor, order.total.currency) : '';
    $('order-email').textContent = order.email || '';
    $('order-card').textContent = cardText(order.card);
    $('order-created').textContent = when(order.created_at);
  }

  // ---------------------------------------------------------------------------------

  const orderPath = window.location.pathname.match(/^\/orders\/([^/]+)$/);
  if (orderPath) startOrderPage(decodeURIComponent(orderPath[1]));
  else startShop();
}());
