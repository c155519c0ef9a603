// AdapterHub website: copy buttons and the snippet's "your model" field. No framework, no build step.
(function () {
  "use strict";

  function fallbackCopy(text) {
    // Clipboard API is missing outside secure contexts (a hub on http://host:port): use a hidden textarea.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.top = "-1000px";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () {
        return fallbackCopy(text);
      });
    }
    return fallbackCopy(text);
  }

  function showState(button, ok) {
    var status = document.getElementById(button.getAttribute("aria-describedby") || "");
    var label = button.getAttribute("data-label") || button.textContent;
    button.setAttribute("data-label", label);
    button.textContent = ok ? "Copied" : "Press Ctrl+C";
    button.classList.toggle("copied", ok);
    button.setAttribute("data-copied", ok ? "true" : "false");
    if (status) {
      status.textContent = ok ? "Copied to the clipboard" : "Copying failed; select the text and copy it";
    }
    clearTimeout(button._resetTimer);
    button._resetTimer = setTimeout(function () {
      button.textContent = label;
      button.classList.remove("copied");
      button.removeAttribute("data-copied");
      if (status) status.textContent = "";
    }, 2500);
  }

  function onCopyClick(event) {
    var button = event.target.closest("button.copy");
    if (!button) return;
    var target = document.getElementById(button.getAttribute("data-copy-target"));
    if (!target) return;
    copyText(target.textContent).then(
      function () { showState(button, true); },
      function () {
        var range = document.createRange();
        range.selectNodeContents(target);
        var selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        showState(button, false);
      }
    );
  }

  function pyString(text) {
    return JSON.stringify(text);
  }

  function bindModelField(input) {
    var pre = document.getElementById(input.getAttribute("data-snippet"));
    if (!pre) return;
    var code = pre.querySelector("code") || pre;
    var prefix = "model = AutoModel.from_pretrained(";
    input.addEventListener("input", function () {
      var name = input.value.trim() || input.getAttribute("placeholder") || "bert-base-uncased";
      var lines = code.textContent.split("\n").map(function (line) {
        return line.indexOf(prefix) === 0 ? prefix + pyString(name) + ")" : line;
      });
      code.textContent = lines.join("\n");
    });
  }

  document.addEventListener("click", onCopyClick);
  document.addEventListener("DOMContentLoaded", function () {
    var fields = document.querySelectorAll("input[data-snippet]");
    for (var i = 0; i < fields.length; i++) bindModelField(fields[i]);
  });
})();
