// Filters the check list: by text (check or object names), lowest severity, failing only.
(function () {
  "use strict";
  const text = document.getElementById("filter-text");
  const severity = document.getElementById("filter-severity");
  const failing = document.getElementById("filter-failing");
  const count = document.getElementById("filter-count");
  const checks = Array.from(document.querySelectorAll("details.check"));

  function apply() {
    const needle = text.value.trim().toLowerCase();
    const lowest = Number(severity.value);
    let shown = 0;
    for (const check of checks) {
      const visible =
        (!needle || check.dataset.text.includes(needle)) &&
        Number(check.dataset.rank) >= lowest &&
        (!failing.checked || check.dataset.status === "fail");
      check.hidden = !visible;
      if (visible) shown += 1;
    }
    count.textContent = shown + " of " + checks.length + " checks";
  }

  text.addEventListener("input", apply);
  severity.addEventListener("change", apply);
  failing.addEventListener("change", apply);
  apply();
  document.documentElement.dataset.ready = "true";
})();
