// The console's own script: progressive enhancement only (every page works without it).
// Times are sent as RFC 3339 in UTC; shown here in the reader's own time zone.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const element of document.querySelectorAll("time[datetime]")) {
    const when = new Date(element.getAttribute("datetime"));
    if (!Number.isNaN(when.getTime())) {
      element.textContent = when.toLocaleString();
      element.title = element.getAttribute("datetime");
    }
  }
});
