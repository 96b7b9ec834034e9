// The console's router and sign-in. Pages live under /ui/...; each page module exports render(main, params,
// signal) and stops its timers and streams when `signal` aborts (on navigation).

import { api, clearKey, getKey, setKey, ApiError } from "./api.js";
import { h, clear } from "./dom.js";
import { navigate } from "./nav.js";
import * as jobs from "./pages/jobs.js";
import * as job from "./pages/job.js";
import * as datasets from "./pages/datasets.js";
import * as dataset from "./pages/dataset.js";
import * as models from "./pages/models.js";
import * as predict from "./pages/predict.js";

const ROUTES = [
  [/^\/ui\/?$/, jobs],
  [/^\/ui\/jobs\/?$/, jobs],
  [/^\/ui\/jobs\/([^/]+)\/?$/, job],
  [/^\/ui\/datasets\/?$/, datasets],
  [/^\/ui\/datasets\/([^/]+)\/?$/, dataset],
  [/^\/ui\/models\/?$/, models],
  [/^\/ui\/predict\/?$/, predict],
];

const main = document.getElementById("app");
let current = null;


function route() {
  current?.abort();
  current = new AbortController();
  clear(main);
  if (!getKey()) { signIn(); return; }
  document.getElementById("nav").hidden = false;
  const path = location.pathname;
  for (const [pattern, page] of ROUTES) {
    const m = path.match(pattern);
    if (m) {
      const signal = current.signal;
      page.render(main, m.slice(1).map(decodeURIComponent), signal).catch((err) => {
        if (signal.aborted) return;
        main.append(h("p", { class: "error", "data-testid": "page-error" }, err.message));
      });
      return;
    }
  }
  main.append(h("p", {}, "No such page. ", h("a", { href: "/ui/jobs", "data-link": true }, "Jobs")));
}

function signIn(message) {
  document.getElementById("nav").hidden = true;
  clear(main);
  const input = h("input", { type: "password", id: "api-key", name: "key", autocomplete: "off", required: true,
    placeholder: "ft_…", "aria-label": "API key" });
  const error = h("p", { class: "error", id: "signin-error" }, message || "");
  const form = h("form", { class: "card signin", id: "signin", method: "post" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste your team's API key (", h("code", {}, "finetune keys create --team NAME"),
      "). It is kept in this tab only, and sent as an Authorization header, never in a URL."),
    input, h("button", { class: "primary", type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    setKey(key);
    try {
      await api("/usage");
      route();
    } catch (err) {
      clearKey();
      error.textContent = err instanceof ApiError && err.status === 401
        ? "That key was not accepted (unknown, revoked or expired)." : err.message;
    }
  });
  main.append(form);
  input.focus();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest("a[data-link]");
  if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
document.getElementById("sign-out").addEventListener("click", () => { clearKey(); route(); });
window.addEventListener("popstate", route);
window.addEventListener("console:unauthorized", () => {
  if (document.getElementById("signin")) return;  // the sign-in form says it itself
  clearKey();
  current?.abort();
  signIn("Your key is no longer accepted; sign in again.");
});
route();
