// Review: Reject asks to be pressed a second time before it acts (a tap on a phone grid is easy
// to misplace); the confirmation disarms by itself after a few seconds. Without JavaScript the
// form posts at once, and Restore on the rejected photo undoes it.
(function () {
  "use strict";
  var WINDOW_MS = 5000;
  document.querySelectorAll("form.reject").forEach(function (form) {
    var button = form.querySelector("button[type=submit]");
    var label = button.textContent;
    var timer = null;
    form.addEventListener("submit", function (e) {
      if (form.dataset.armed === "1") return;  // second press: go
      e.preventDefault();
      form.dataset.armed = "1";
      button.textContent = "Confirm reject";
      button.setAttribute("aria-live", "polite");
      clearTimeout(timer);
      timer = setTimeout(function () { form.dataset.armed = ""; button.textContent = label; }, WINDOW_MS);
    });
  });
})();
