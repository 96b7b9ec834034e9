// Go to another page of the console without a reload (main.js routes on popstate).
export function navigate(path) {
  history.pushState({}, "", path);
  window.dispatchEvent(new PopStateEvent("popstate"));
}
