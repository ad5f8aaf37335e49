// Polls a JSON endpoint every second for a page's live card (a job's progress, an import's) and
// hands each answer to `show`, until `show` returns true (the thing has ended). A failed request
// (the server restarting) is simply tried again a second later. The browser sends an ETag back
// by itself, so an unchanged answer costs a 304.
window.pollJson = function (url, show) {
  "use strict";
  async function poll() {
    let body = null;
    try {
      const response = await fetch(url, {credentials: "same-origin", cache: "no-cache",
                                         headers: {Accept: "application/json"}});
      if (response.ok) body = await response.json();
    } catch (error) { /* the server may be restarting: try again */ }
    if (body && show(body)) return;
    window.setTimeout(poll, 1000);
  }
  poll();
};
